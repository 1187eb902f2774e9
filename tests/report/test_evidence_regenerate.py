"""docs/results/regenerate.sh end to end on a tiny stand-in of the evidence study (the shipped
YAML with digits, a 4-channel CNN, 2 epochs, one seed, CE and SCL+FP): the run, then the report
into a folder; its Table 3 holds the NC metrics MLflow has, and --report-only rebuilds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "results" / "regenerate.sh"


def _stand_in(tmp_path: Path) -> Path:
    """The evidence YAML with digits and a tiny model: the same sections, seconds to run."""
    study = yaml.safe_load((REPO / "studies" / "evidence_cifar10_cpu.yaml").read_text())
    study["name"] = "evidence_tiny"
    study["dataset"] = {"name": "digits", "image_size": 8}
    study["model"] = {"name": "small_cnn", "width": 4, "feature_dim": 16}
    study["train"]["epochs"] = 2
    study["losses"] = [loss for loss in study["losses"] if loss["name"] in ("ce", "supcon")]
    study["grid"]["seed"] = [0]
    study["evaluation"]["probes"]["epochs"] = 2
    path = tmp_path / "evidence_tiny.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _regenerate(*args: str) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "NCSTUDY_THREADS": "1"}
    env.pop("EVIDENCE_CIFAR10_ROOT", None)
    done = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_regenerate_runs_the_study_and_writes_its_report(tmp_path: Path) -> None:
    study, runs, out = _stand_in(tmp_path), tmp_path / "runs", tmp_path / "docs"
    _regenerate("--study", str(study), "--output", str(runs), "--out", str(out))

    mlf = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("evidence_tiny")
    nc = {
        r.data.tags["ncstudy.trial_key"].split("-")[0]: r.data.metrics
        for r in mlf.search_runs([exp.experiment_id])
        if "ncstudy.trial_key" in r.data.tags
    }
    assert sorted(nc) == ["ce", "supcon"]
    table3 = pd.read_csv(out / "tables" / "nc_final.csv").set_index("loss")
    for loss, metrics in nc.items():  # one seed: the table's cells are the trials' values
        for m in ("erank_intra", "erank_inter", "align_weight_inst", "nc1"):
            assert table3.loc[loss, m] == pytest.approx(metrics[f"nc/{m}"], rel=1e-9)
    assert (out / "tables" / "convergence.md").read_text().count("supcon") == 2  # (I), (II)
    figures = list((out / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)

    again = tmp_path / "again"  # the coordinator's step: the report from the existing store
    _regenerate("--report-only", "--study", str(study), "--output", str(runs), "--out", str(again))
    assert (again / "tables" / "nc_final.csv").read_text() == (
        out / "tables" / "nc_final.csv"
    ).read_text()
