"""`python -m ncstudy.report STUDY1 STUDY2 --out DIR` on two tiny real studies (Ray Tune, real
training on digits, MLflow): one Table 1 across them, each cell the study's own MLflow value."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.report.cli import main as report_main

pytestmark = pytest.mark.slow

BASE = {
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 1, "lr": 0.1, "warmup_epochs": 0},
    "grid": {"batch_size": [64], "seed": [0]},
    "evaluation": {"every": 1},
}


def run_studies(paths: list[Path]) -> list:
    """Run the studies one after the other on one new local Ray instance (never join another
    Ray cluster on this machine)."""
    import ray  # heavy: only this slow test starts Ray

    from ncstudy.config import load_study  # with ray: the study runner's imports
    from ncstudy.study import run_study  # starts Ray actors: only inside this test

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"NCSTUDY_THREADS": "1"}},
    )
    try:
        return [row for p in paths for row in run_study(load_study(p))]
    finally:
        ray.shutdown()


def test_report_across_two_real_studies(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "runs"
    paths = []
    # one trial per study (each is seconds of training, Ray's start-up dominates)
    for name, loss in (("alpha", {"name": "ce"}), ("beta", {"name": "normface"})):
        study = {**BASE, "name": name, "output_dir": str(out), "losses": [loss]}
        study["grid"] = {**BASE["grid"], "temperature": [0.5]}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(study))
        paths.append(path)
    rows = run_studies(paths)
    assert [r.status for r in rows] == ["FINISHED"] * 2, rows

    report = tmp_path / "across"
    assert report_main([str(out / "alpha"), str(out / "beta"), "--out", str(report)]) == 0
    assert "report:" in capsys.readouterr().out
    table = pd.read_csv(report / "tables" / "best_across_datasets.csv").set_index("loss")
    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for name, loss, key in (
        ("alpha", "ce", "ce-b64-s0"),
        ("beta", "normface", "normface-t0.5-b64-s0"),
    ):
        exp = mlf.get_experiment_by_name(name)
        runs = {
            r.data.tags["ncstudy.trial_key"]: r.data.metrics
            for r in mlf.search_runs([exp.experiment_id])
            if "ncstudy.trial_key" in r.data.tags
        }
        column = f"digits ({name})"  # the same dataset in two studies: named by study
        assert table.loc[loss, column] == pytest.approx(100 * runs[key]["final/test_acc1"])
        assert table.loc[loss, f"{column} batch size"] == 64
    assert pd.isna(table.loc["ce", "digits (beta)"])  # beta has no ce trial
    shown = (report / "tables" / "best_across_datasets.md").read_text()
    assert "digits (alpha)" in shown and "τ=0.5, b=64" in shown and "—" in shown
    assert (report / "index.html").exists() and (report / "report.md").exists()
    # several studies need --out; an unknown study is a clear error
    assert report_main([str(out / "alpha"), str(out / "beta")]) == 2
    missing = report_main([str(out / "alpha"), "nope", "--output", str(out), "--out", "x"])
    assert missing == 2 and "nope" in capsys.readouterr().err
