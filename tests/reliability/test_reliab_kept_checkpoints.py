"""Bounded checkpoints in Ray Tune as in Ray Train (issue 19, section 3): a fast-path trial
(run in the Tune process) that checkpoints every epoch keeps only the newest
`resources.checkpoints_to_keep`; before, Tune kept every one (192 in 75 s for a small CNN)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

EPOCHS = 6
STUDY = {
    "name": "kept",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": EPOCHS},
    "grid": {"batch_size": [64]},
    "evaluation": {"checkpoint_every": 1},
    "resources": {"checkpoints_to_keep": 2},
}


def test_a_fast_path_trial_keeps_the_newest_two_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "kept.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", "ncstudy.run", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    trial_dir = tmp_path / "runs" / "kept" / "tune" / "ce-b64-s0"
    kept = sorted(p.name for p in trial_dir.glob("checkpoint_*"))
    # one checkpoint per epoch was reported (indices 0 .. EPOCHS-1); the newest two stay
    assert kept == [f"checkpoint_{i:06d}" for i in (EPOCHS - 2, EPOCHS - 1)]
