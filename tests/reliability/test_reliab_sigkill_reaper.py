"""A SIGKILL of the driver takes its Ray processes with it (issue 19, section 5): before, two
Ray agents stayed alive, reparented and on open ports, for 1-2.5 minutes. A real study runs
through `python -m ncstudy.run`; once its trial trains, the driver gets SIGKILL and every
process of its tree must be gone within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

STUDY = {
    "name": "kill",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 200},  # far longer than the test waits
    "grid": {"batch_size": [64]},
}


def tree(root: psutil.Process) -> dict[int, tuple[float, str]]:
    """pid -> (start time, name) of root's descendants."""
    out = {}
    for proc in root.children(recursive=True):
        try:
            out[proc.pid] = (proc.create_time(), " ".join(proc.cmdline()[:3]) or proc.name())
        except psutil.Error:
            continue
    return out


def still_running(procs: dict[int, tuple[float, str]]) -> list[str]:
    left = []
    for pid, (started, name) in procs.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {name}")
        except psutil.NoSuchProcess:
            continue
    return left


def test_sigkill_of_the_driver_ends_its_ray_processes(tmp_path: Path) -> None:
    path = tmp_path / "kill.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ncstudy.run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    driver = psutil.Process(proc.pid)
    mlflow_db = tmp_path / "runs" / "mlflow.db"
    deadline = time.monotonic() + 400
    seen: dict[int, tuple[float, str]] = {}
    # wait until the agents run and the trial has logged (the trial's worker is up)
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the study ended before the test could kill it"
        seen.update(tree(driver))
        names = " ".join(name for _, name in seen.values())
        if "DashboardAgent" in names and "RuntimeEnvAgent" in names and _trial_logged(mlflow_db):
            break
        time.sleep(1)
    else:
        pytest.fail(f"the trial did not start within the time limit: {seen}")
    seen.update(tree(driver))
    ray_procs = {p: v for p, v in seen.items() if "ncstudy.reaper" not in v[1]}
    assert len(ray_procs) >= 4, ray_procs  # gcs_server, raylet, agents, the trial's worker

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15  # the watcher polls each second; SIGKILL after 2 s
    while still_running(seen) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert still_running(seen) == []


def _trial_logged(mlflow_db: Path) -> bool:
    """Whether some trial has logged a metric (read-only SQLite query)."""
    import sqlite3

    if not mlflow_db.exists():
        return False
    try:
        con = sqlite3.connect(f"{mlflow_db.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False
