"""A deterministic configuration error inside a trial is not retried (issue 19, section 4).
The pre-flight of `ncstudy.run` refuses a batch larger than the training split before Ray
starts (test_reliab_bad_values.py); here the study driver runs without it, so the trial meets
the error itself, with two Tune retries allowed: the run ends FAILED with the reason, and Tune
records no trial error (a raised error is retried, and Tune writes error.txt for each)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

STUDY = {
    "name": "nr",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 1},
    "grid": {"batch_size": [2048]},  # digits' training split has 1169 images
    "resources": {"trial_max_failures": 2},
}

DRIVER = """
import sys
from ncstudy.config import load_study
from ncstudy.study import run_study
rows = run_study(load_study(sys.argv[1]))
print("ROWS", [(r.key, r.status) for r in rows])
"""


def test_a_trial_configuration_error_fails_once_without_retries(tmp_path: Path) -> None:
    path = tmp_path / "nr.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ROWS [('ce-b2048-s0', 'FAILED')]" in done.stdout

    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("nr")
    runs = [
        r
        for r in mlf.search_runs([exp.experiment_id])
        if r.data.tags.get("ncstudy.role") == "trial"
    ]
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    reason = runs[0].data.tags["ncstudy.failure_reason"]
    assert "TrialConfigError: batch_size 2048 is larger than the training set" in reason

    tune_dir = tmp_path / "runs" / "nr" / "tune"
    assert (tune_dir / "ce-b2048-s0").is_dir()  # the trial ran ...
    errors = [p for p in tune_dir.rglob("*") if p.name.startswith("error")]
    assert errors == []  # ... and ended without raising, so nothing was retried
