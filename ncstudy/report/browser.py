"""Open a report's index.html in headless Chromium through the DevTools protocol: collect the
console errors, uncaught exceptions and failed loads, check every image decoded, and optionally
save a screenshot (docs/report.png is made with it).

`python -m ncstudy.report.browser REPORT/index.html [--screenshot PNG]` exits 1 when the page has
an error or a broken image. Needs Debian's `chromium` (or $CHROMIUM naming another binary);
Chromium binds its DevTools port to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")
SECTIONS_JS = """JSON.stringify(Array.from(document.querySelectorAll("h2[id]")).map(
    h => [h.id, Math.round(h.getBoundingClientRect().top + window.scrollY)]))"""
IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({
    alt: i.alt, ok: i.complete && i.naturalWidth > 0})))"""


@dataclass
class PageCheck:
    """What the browser saw: console errors and failed loads, every image and whether it
    decoded, the page's height in CSS pixels."""

    errors: list[str] = field(default_factory=list)
    images: list[tuple[str, bool]] = field(default_factory=list)
    height: int = 0
    sections: dict[str, int] = field(default_factory=dict)  # h2 id -> its top in CSS px

    @property
    def broken_images(self) -> list[str]:
        return [alt for alt, ok in self.images if not ok]


def chromium_binary() -> str | None:
    """$CHROMIUM, else the first Chromium on PATH, else None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def check_page(
    index: Path, screenshot: Path | None = None, width: int = 1280, timeout: float = 60.0
) -> PageCheck:
    """Load `index` in a fresh headless Chromium and report what it saw."""
    with headless_chromium(width, timeout) as url:
        return asyncio.run(
            asyncio.wait_for(_drive(url, index.resolve(), screenshot, width), timeout)
        )


@contextmanager
def headless_chromium(width: int, timeout: float) -> Iterator[str]:
    """A fresh headless Chromium with its own profile folder, in its own process group: its
    DevTools websocket URL. On exit every process of the group is gone before the profile is
    removed (the renderer and helpers outlive the main process by a moment, writing into the
    profile: removing it then failed with 'Directory not empty')."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError(
            "no Chromium found: install Debian's `chromium` (apt-get install chromium) or set "
            "CHROMIUM to a Chromium/Chrome binary"
        )
    with tempfile.TemporaryDirectory(prefix="ncstudy-chromium-") as profile:
        cmd = [
            binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank",
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            yield _devtools_url(proc, timeout)
        finally:
            stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL what is left after `grace` seconds, and
    return once no process of the group remains, or `grace` seconds after the SIGKILL (a
    killed child stays a zombie until the machine's init reaps it; it writes nothing)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(proc.pid, sig)
        end = time.monotonic() + grace
        while time.monotonic() < end and _group_alive(proc):
            time.sleep(0.05)
        if not _group_alive(proc):
            return


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of the group remains (the leader is reaped here, as it exits)."""
    proc.poll()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _devtools_url(proc: subprocess.Popen, timeout: float) -> str:
    """The browser's DevTools websocket, from the line Chromium prints when it listens."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)  # type: ignore[arg-type]
    seen, end = [], time.monotonic() + timeout
    while time.monotonic() < end:
        if not sel.select(timeout=1.0):
            continue
        line = proc.stderr.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        m = LISTENING.search(line)
        if m:  # keep draining stderr, so Chromium never blocks on a full pipe
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
            return m.group(1)
    raise RuntimeError("Chromium did not open its DevTools port:\n" + "".join(seen[-20:]))


async def _drive(url: str, index: Path, screenshot: Path | None, width: int) -> PageCheck:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        cdp = _Cdp(ws)
        target = await cdp.call("Target.createTarget", url="about:blank")
        attached = await cdp.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        cdp.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await cdp.call(f"{domain}.enable")
        await cdp.call("Page.navigate", url=index.as_uri())
        await cdp.wait_for("Page.loadEventFired")
        height, shown = await _evaluate(cdp, "document.documentElement.scrollHeight"), 0
        for _ in range(3):  # the whole page in one viewport: positions and screenshot agree
            if height == shown:
                break
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                width=width, height=int(height), deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            shown = height
            height = await _evaluate(cdp, "document.documentElement.scrollHeight")
        check = PageCheck(
            errors=cdp.errors,
            images=[(i["alt"], i["ok"]) for i in json.loads(await _evaluate(cdp, IMAGES_JS))],
            height=int(height),
            sections=dict(json.loads(await _evaluate(cdp, SECTIONS_JS))),
        )
        if screenshot is not None:
            shot = await cdp.call("Page.captureScreenshot", format="png")
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return check


async def _evaluate(cdp: _Cdp, expression: str) -> Any:
    """The value of a JavaScript expression in the page."""
    reply = await cdp.call("Runtime.evaluate", expression=expression, returnByValue=True)
    return reply["result"]["value"]


class _Cdp:
    """A minimal DevTools protocol client: numbered calls, events kept as they arrive, and the
    page's errors (console errors, uncaught exceptions, failed loads) collected from them."""

    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.session = ws, 0, None
        self.events: list[dict] = []
        self.errors: list[str] = []

    async def call(self, method: str, **params: Any) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session is not None:
            msg["sessionId"] = self.session
        await self.ws.send_str(json.dumps(msg))
        while True:
            reply = await self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    async def wait_for(self, event: str) -> dict:
        while True:
            found = next((e for e in self.events if e.get("method") == event), None)
            if found is not None:
                return found
            await self._receive()

    async def _receive(self) -> dict:
        msg = json.loads((await self.ws.receive()).data)
        if "method" in msg:
            self.events.append(msg)
            self._collect(msg)
        return msg

    def _collect(self, msg: dict) -> None:
        method, params = msg["method"], msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught exception: {text}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            self.errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")


def main(argv: Sequence[str] | None = None) -> int:
    """Check a report page; exit 1 on an error or a broken image."""
    parser = argparse.ArgumentParser(prog="python -m ncstudy.report.browser", description=__doc__)
    parser.add_argument("index", type=Path, help="the report's index.html")
    parser.add_argument("--screenshot", type=Path, help="save a full-page PNG here")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in px")
    parser.add_argument("--sections", type=Path, help="write each section's top (px) as JSON")
    args = parser.parse_args(argv)
    check = check_page(args.index, args.screenshot, args.width)
    if args.sections is not None:
        args.sections.write_text(json.dumps(check.sections, indent=1))
    print(f"{len(check.images)} images, {len(check.broken_images)} broken; height {check.height}px")
    for err in check.errors:
        print(f"error: {err}", file=sys.stderr)
    for alt in check.broken_images:
        print(f"broken image: {alt}", file=sys.stderr)
    return 1 if check.errors or check.broken_images else 0


if __name__ == "__main__":
    sys.exit(main())
