"""Paper 004's figures (ncstudy/report/paper004.py): on a hand-made StudyData (the captions
carry the values it holds), and end to end on the shipped CPU studies cut down to a few
trials (Ray Tune, real training, MLflow, the report CLI)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from ncstudy.report import paper004
from ncstudy.report.load import NOT_STARTED

REPO = Path(__file__).resolve().parents[2]


def _trials() -> pd.DataFrame:
    rows = []
    for loss in ("ce", "mse"):
        for width in (4, 8):
            for epochs in (1, 2):
                for seed in (0, 1):
                    acc = 0.5 + 0.1 * (width == 8) + 0.05 * epochs + 0.01 * seed
                    key = f"{loss}-w{width}-e{epochs}-s{seed}"
                    rows.append(
                        {
                            "key": key,
                            "loss": loss,
                            "seed": seed,
                            "epochs": epochs,
                            "status": "FINISHED",
                            "dataset": "digits",
                            "model": "small_cnn",
                            "axes": {"model.width": width, "train.epochs": epochs},
                            paper004.TEST_AT_BEST_VAL: acc,
                        }
                    )
    rows.append({**rows[0], "key": "never", "status": NOT_STARTED})
    return pd.DataFrame(rows)


def _histories(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in trials.iterrows():
        for step in (1, 2):
            for metric in ("nc/nc1", "nc/nc2_zhou", "nc/nc3_zhou", "train/acc1", "test/acc1"):
                value = 1.0 / (step + r["seed"]) if metric.startswith("nc/") else 0.5 + step / 10
                rows.append({"key": r["key"], "metric": metric, "step": step, "value": value})
    return pd.DataFrame(rows)


def test_figures_of_a_hand_made_study(tmp_path: Path) -> None:
    trials = _trials()
    data = SimpleNamespace(trials=trials, histories=_histories(trials))
    files = paper004.figures(data, tmp_path)
    assert [f.name for f in files] == [
        "paper004_fig1_nc",
        "paper004_fig2_accuracy",
        "paper004_fig3_width_epochs",
    ]
    assert all(f.path.stat().st_size > 5000 for f in files)
    fig1, fig2, fig3 = (f.caption for f in files)
    # Figures 1-2: the widest, longest trials (width 8, 2 epochs), mean over seeds 0 and 1
    assert "final NC1 ce 0.417, mse 0.417" in fig1  # (1/2 + 1/3) / 2
    assert "width 8" in fig1 and "2 epochs, 2 seed(s)" in fig1
    assert "best-validation epoch ce 70.5, mse 70.5" in fig2  # 50 + 10 + 10 + 0.5
    assert "final training accuracy ce 70.0" in fig2
    assert "ce 70.5, mse 70.5 (spread 0.0 points)" in fig3
    assert "range over all cells 55.5-70.5 %" in fig3


def test_no_paper004_figures_for_other_studies(tmp_path: Path) -> None:
    trials = _trials().drop(columns=[paper004.TEST_AT_BEST_VAL])
    data = SimpleNamespace(trials=trials, histories=_histories(trials))
    assert paper004.figures(data, tmp_path) == []


def test_heatmap_needs_both_axes(tmp_path: Path) -> None:
    trials = _trials()
    trials = trials[trials.epochs == 2]  # one epoch count: no Figure 3
    assert paper004.width_epoch_heatmap(trials, tmp_path) == []


def _cut(name: str, tmp_path: Path, **changes: object) -> Path:
    """A shipped study, cut down (its top-level sections replaced key by key)."""
    study = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    for section, values in changes.items():
        study[section] = {**study[section], **values} if isinstance(values, dict) else values
    study["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.slow
def test_cpu_studies_end_to_end_with_their_figures(tmp_path: Path) -> None:
    import ray  # noqa: I001  (Ray and MLflow: only for the end-to-end test)
    from mlflow.tracking import MlflowClient

    from ncstudy.config import load_study
    from ncstudy.report.cli import main as report_main
    from ncstudy.study import run_study

    losses = [{"name": "ce"}, {"name": "mse", "params": {"kappa": 1.0, "beta": 15.0}}]
    net = _cut(
        "losses_equal_cpu",
        tmp_path,
        losses=losses,
        grid={"seed": [0], "axes": {"model.width": [4, 8], "train.epochs": [1, 2]}},
    )
    ufm = _cut("ufm_losses_equal", tmp_path, losses=losses, grid={"seed": [0]})
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        rows = run_study(load_study(net)) + run_study(load_study(ufm))
    finally:
        ray.shutdown()
    assert [r.status for r in rows] == ["FINISHED"] * 10, rows
    out = tmp_path / "runs"
    for name, figures in [
        (
            "losses_equal_cpu",
            ["paper004_fig1_nc", "paper004_fig2_accuracy", "paper004_fig3_width_epochs"],
        ),
        ("ufm_losses_equal", ["paper004_ufm_objective"]),
    ]:
        assert report_main([str(out / name)]) == 0
        report = (out / name / "report" / "report.md").read_text()
        for fig in figures:
            assert (
                f"figures/{fig}.png" in report
                and (out / name / "report" / "figures" / f"{fig}.png").is_file()
            )
    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlf.search_runs([mlf.get_experiment_by_name("ufm_losses_equal").experiment_id])
    gaps = [
        r.data.metrics["ufm/objective_gap"] for r in runs if "ufm/objective_gap" in r.data.metrics
    ]
    assert len(gaps) == 2 and np.max(np.abs(gaps)) < 1e-6  # Theorem 1's optimum is reached
