"""After a SIGKILL of the driver, `--resume` needs no hand work (issue 19, section 1): a real
`python -m ncstudy.run` is killed once its trial trains; while it lived its lock and lease
were held, and the parent run was left RUNNING with its owner tag. `--resume` then takes the
study over (the kernel released the lock file, the lease names a PID gone on this host) and
finishes it: exit 0, the trial FINISHED, the owner tag cleared."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STUDY = {
    "name": "killed",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 20},
    "grid": {"batch_size": [64]},
}


def _trial_logged(mlflow_db: Path) -> bool:
    """Whether some trial has logged a metric (read-only SQLite query)."""
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


def test_resume_after_sigkill_of_the_driver_needs_no_hand_work(tmp_path: Path) -> None:
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "ncstudy.run", str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    mlflow_db = tmp_path / "runs" / "mlflow.db"
    deadline = time.monotonic() + 400
    while not _trial_logged(mlflow_db):
        assert proc.poll() is None, "the study ended before the test could kill it"
        assert time.monotonic() < deadline, "the trial did not start within the time limit"
        time.sleep(1)
    lock_file = tmp_path / "runs" / "killed" / "study.lock"
    assert f"PID {proc.pid}, started " in lock_file.read_text()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    mlf = MlflowClient(f"sqlite:///{mlflow_db}")
    exp = mlf.get_experiment_by_name("killed")
    (parent,) = mlf.search_runs([exp.experiment_id], "tags.`ncstudy.role` = 'study'")
    assert parent.info.status == "RUNNING"
    assert parent.data.tags["ncstudy.owner"].split(":")[-2] == str(proc.pid)

    done = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = mlf.search_runs([exp.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    parent = mlf.get_run(parent.info.run_id)
    assert "ncstudy.owner" not in parent.data.tags
    assert lock_file.read_text() == ""  # free, naming no one
