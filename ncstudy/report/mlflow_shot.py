"""A screenshot of a study's runs table in MLflow's own UI: an MLflow server on 127.0.0.1 over
the study's store, headless Chromium (the DevTools client of ncstudy.report.browser) with the
table's view state set first, the study's run expanded to its trials, and metric columns.

MLflow 3.17 keeps that view state in the browser, not in the URL: its built UI stores it as
JSON under the localStorage key `MLflowLocalStorage-1.1-ExperimentPage-["<experiment id>"]-
ReactComponentState` (the fields `selectedColumns`, e.g. "metrics.`final/test_acc1`", and
`runsExpanded`, run id -> true), read when the experiment page opens; `local_storage` lists the
UI's other flags set here.

`python -m ncstudy.report.mlflow_shot STUDY [--output DIR] --screenshot PNG` prints what the
page showed and exits 1 when the trials or their metric columns are missing from it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ncstudy import tracking
from ncstudy.report.browser import _Cdp, _evaluate, headless_chromium
from ncstudy.report.cli import resolve_target
from ncstudy.summary import runs_view_url

STORE_KEY = 'MLflowLocalStorage-1.1-ExperimentPage-["{}"]-ReactComponentState'
# the columns shown, in this order, where the study's trials logged them
METRICS = ("best/val_acc1", "final/test_acc1", "nc/nc1", "train/loss")
PARAMS = ("temperature", "batch_size")
TEXT_JS = "document.body ? document.body.innerText : ''"


@dataclass
class RunsView:
    """What the page showed: its text, the trials' run names, the metric columns asked for."""

    text: str
    trials: list[str]
    metrics: list[str]

    @property
    def missing(self) -> list[str]:
        return [n for n in self.trials + self.metrics if n not in self.text]


def view_state(parent_run_id: str, metrics: Sequence[str], params: Sequence[str]) -> dict:
    """The runs table's persisted state: the study's run expanded, these columns selected."""
    columns = [f"params.`{p}`" for p in params] + [f"metrics.`{m}`" for m in metrics]
    return {"selectedColumns": columns, "runsExpanded": {parent_run_id: True}}


def local_storage(experiment_id: str, state: dict) -> dict[str, str]:
    """Every localStorage entry set before the page loads: the runs table's state, and the UI's
    own flags (each stored as JSON under `<key>_v1`) for the training view and for its
    assistant panel closed, never auto-opened (it would cover a third of the table)."""
    flags = {
        "mlflow.workflowType": "machine_learning",
        "mlflow.assistant.panelOpen": False,
        "mlflow.assistant.fab.autoOpenedOnFirstLoad": True,
    }
    out = {STORE_KEY.format(experiment_id): json.dumps(state)}
    out.update({f"{k}_v1": json.dumps(v) for k, v in flags.items()})
    return out


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, timeout: float = 180.0) -> Iterator[str]:
    """An MLflow server (one worker) over the store on a free 127.0.0.1 port; its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        # a viewer runs no MLflow jobs: without their executor the server starts faster
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_healthy(proc, base, log, timeout)
            yield base
        finally:
            _end(proc)


def _end(proc: subprocess.Popen) -> None:
    """Terminate a process this module started, killing it if it lingers."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_healthy(proc: subprocess.Popen, base: str, log: Any, timeout: float) -> None:
    """Until the server answers /health; its output in the error when it exits or times out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{base}/health", timeout=2) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.3)
    log.seek(0)
    tail = log.read().decode(errors="replace")[-2000:]
    raise RuntimeError(f"the MLflow server at {base} did not come up:\n{tail}")


def study_view(tracking_uri: str, study_name: str) -> tuple[str, dict, list[str], list[str]]:
    """(experiment id, view state, trial run names, metric columns) of a study in its store."""
    found = tracking.find_study_run(tracking_uri, study_name)
    if found is None:
        raise ValueError(
            f"no study '{study_name}' in {tracking.shown_uri(tracking_uri)}: run it first"
        )
    mlf, experiment_id, parent = found[0], found[1], found[2]
    runs = tracking.find_runs(mlf, experiment_id, tracking.ROLE_TAG, "trial")
    logged = {k for r in runs for k in r.data.metrics}
    params = {k for r in runs for k in r.data.params}
    metrics = [m for m in METRICS if m in logged]
    shown = [p for p in PARAMS if p in params]
    state = view_state(parent.info.run_id, metrics, shown)
    return experiment_id, state, sorted(r.info.run_name for r in runs), metrics


def capture(
    tracking_uri: str, study_name: str, screenshot: Path | None, width: int = 1600,
    timeout: float = 180.0,
) -> RunsView:  # fmt: skip
    """Serve the store, open the study's runs table with its trials expanded and metric
    columns in a fresh headless Chromium, wait until they show, and screenshot the page."""
    experiment_id, state, trials, metrics = study_view(tracking_uri, study_name)
    with mlflow_server(tracking_uri) as base, headless_chromium(width, timeout) as url:
        page = Page(base, experiment_id, state, trials + metrics, width)
        text = asyncio.run(asyncio.wait_for(page.drive(url, screenshot), timeout))
    return RunsView(text, trials, metrics)


@dataclass
class Page:
    """The runs table of one experiment as the browser is told to show it."""

    base: str
    experiment_id: str
    state: dict
    expected: list[str]  # texts the page shows once the table has rendered
    width: int

    async def drive(self, url: str, screenshot: Path | None) -> str:
        """Set the view state on the server's origin, open the runs table, wait for the
        expected texts (or the timeout), screenshot; the page's text."""
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            target = await cdp.call("Target.createTarget", url="about:blank")
            attached = await cdp.call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            cdp.session = attached["sessionId"]
            await cdp.call("Page.enable")
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                width=self.width, height=900, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            await cdp.call("Page.navigate", url=f"{self.base}/health")  # the UI's origin
            await cdp.wait_for("Page.loadEventFired")
            for key, value in local_storage(self.experiment_id, self.state).items():
                js = f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})"
                await _evaluate(cdp, js + ", localStorage.length")
            await cdp.call("Page.navigate", url=runs_view_url(self.base, self.experiment_id))
            text = await self._settled(cdp)
            if screenshot is not None:
                shot = await cdp.call("Page.captureScreenshot", format="png")
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            return text

    async def _settled(self, cdp: _Cdp) -> str:
        """The page's text once it shows every expected text (polled; the caller times out)."""
        while True:
            text = await _evaluate(cdp, TEXT_JS)
            if all(t in text for t in self.expected):
                await asyncio.sleep(1.0)  # let the last cells and fonts paint
                return await _evaluate(cdp, TEXT_JS)
            await asyncio.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """Screenshot a study's MLflow runs table; exit 1 when trials or metric columns miss."""
    parser = argparse.ArgumentParser(
        prog="python -m ncstudy.report.mlflow_shot", description=__doc__
    )
    parser.add_argument("study", help="the study's name or folder")
    parser.add_argument("--output", help="the studies' output folder (as for ncstudy.report)")
    parser.add_argument("--screenshot", type=Path, required=True, help="save the PNG here")
    parser.add_argument("--width", type=int, default=1600, help="viewport width in px")
    args = parser.parse_args(argv)
    target = resolve_target(args.study, args.output)
    view = capture(target.tracking_uri, target.name, args.screenshot, args.width)
    print(f"{args.screenshot}: {len(view.trials)} trials, columns {', '.join(view.metrics)}")
    for name in view.missing:
        print(f"not shown: {name}", file=sys.stderr)
    return 1 if view.missing else 0


if __name__ == "__main__":
    sys.exit(main())
