"""Two drivers on one study (issue 19, section 1), for real: two `python -m ncstudy.run` of the
same tiny digits study started together. Before, both passed the "already exists" check and
wrote the same MLflow runs (30 `train/loss` points for 15 epochs). Now exactly one runs, the
other exits 2 naming the owner, and the history holds each epoch once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

EPOCHS = 6
STUDY = {
    "name": "two",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": EPOCHS},
    "grid": {"batch_size": [64]},
}


def test_two_drivers_started_together_one_runs_the_other_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ncstudy.run", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    message = outs[loser][1]
    assert f"is being run by another driver: host {socket.gethostname()}, " in message, message
    assert f"PID {procs[winner].pid}, started " in message, message
    assert "Traceback" not in message

    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("two")
    runs = mlf.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags["ncstudy.role"] for r in runs)
    assert roles == ["study", "trial"]  # one parent run, one child run
    parent = next(r for r in runs if r.data.tags["ncstudy.role"] == "study")
    assert parent.info.status == "FINISHED" and "ncstudy.owner" not in parent.data.tags
    assert "ncstudy.heartbeat" in parent.data.tags  # the parent run shows the heartbeat
    child = next(r for r in runs if r.data.tags["ncstudy.role"] == "trial")
    assert child.info.status == "FINISHED"
    steps = [m.step for m in mlf.get_metric_history(child.info.run_id, "train/loss")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == EPOCHS  # each epoch once
