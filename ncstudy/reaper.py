"""The driver's Ray processes end with the driver, even after SIGKILL.

A local Ray's GCS and raylet share the driver's fate, but its agents (dashboard agent,
runtime-env agent) notice a dead raylet only after a timeout: after a SIGKILL of the driver
they stayed alive, reparented and on open ports, for 1-2.5 minutes. A small watcher process
holds the read end of a pipe whose write end only the driver has; the kernel closes it when
the driver dies, however it dies. Until then the watcher notes the driver's descendants
(pid and start time, so a reused pid is never hit); then it ends the ones still running.

    python -m ncstudy.reaper DRIVER_PID      (started by `start`, reading the pipe on stdin)
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import psutil

POLL_S = 1.0  # how often the watcher refreshes the driver's descendants
GRACE_S = 2.0  # SIGTERM, then SIGKILL after this long

_watcher: subprocess.Popen | None = None


def start() -> None:
    """Start the watcher of this process once (its pipe's write end stays open in here only:
    the fd is not inheritable, so Ray's processes do not hold it)."""
    global _watcher
    if _watcher is not None and _watcher.poll() is None:
        return
    _watcher = subprocess.Popen(
        [sys.executable, "-m", "ncstudy.reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C of the terminal must not end the watcher first
    )


def watch(driver_pid: int) -> None:
    """Note the driver's descendants until the pipe on stdin closes, then end them."""
    me = os.getpid()
    known: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return
    while True:
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child.create_time())
        except psutil.NoSuchProcess:
            break
        ready, _, _ = select.select([sys.stdin], [], [], POLL_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver has exited
    end(known)


def end(known: dict[int, float]) -> None:
    """SIGTERM the processes of `known` that still run (same pid and start time), SIGKILL
    those left after GRACE_S."""
    alive = []
    for pid, started in known.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started:
                proc.terminate()
                alive.append(proc)
        except psutil.Error:
            continue
    deadline = time.monotonic() + GRACE_S
    _, alive = psutil.wait_procs(alive, timeout=max(0.0, deadline - time.monotonic()))
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    watch(int(sys.argv[1]))
