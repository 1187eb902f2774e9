"""The report on a small real study (Ray Tune, real training, MLflow): its tables checked against
the values in MLflow, its figures written and non-empty, its files logged to the parent run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.convergence_ref import REFERENCE_TAG, log_steps_to_ref, metric_series
from ncstudy.metrics import steps_to_ref
from ncstudy.report.cli import main as report_main
from ncstudy.report.table7 import TABLE7_METRICS

pytestmark = pytest.mark.slow

STUDY = {
    "name": "rep",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 3, "lr": 0.1, "warmup_epochs": 1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"temperature": [0.1, 1.0], "batch_size": [64], "seed": [0]},
    "evaluation": {"every": 1},
}


def _run_study(path: Path) -> list:
    """Run the study in this process on a new local Ray instance (address="local": never join
    another Ray cluster that happens to run on this machine)."""
    import ray

    from ncstudy.config import load_study
    from ncstudy.study import run_study

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"NCSTUDY_THREADS": "1"}},
    )
    try:
        return run_study(load_study(path))
    finally:
        ray.shutdown()


def test_report_of_a_real_study(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(out)}))
    rows = _run_study(path)
    assert [r.status for r in rows] == ["FINISHED"] * 3, rows

    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("rep")
    runs = {
        r.data.tags["ncstudy.trial_key"]: r
        for r in mlf.search_runs([exp.experiment_id])
        if "ncstudy.trial_key" in r.data.tags
    }
    log_steps_to_ref(mlf, exp.experiment_id, sorted(runs))

    assert report_main([str(out / "rep")]) == 0  # in-process: the CLI's imports are paid once
    folder = out / "rep" / "report"
    runs = {k: mlf.get_run(r.info.run_id) for k, r in runs.items()}  # with steps_to_ref

    # Table 9-10 cells are the MLflow test accuracies (one seed: no averaging)
    acc = pd.read_csv(folder / "tables" / "accuracy_temperature.csv").set_index("loss")
    for tau in ("0.1", "1"):
        test = runs[f"normface-t{tau}-b64-s0"].data.metrics["final/test_acc1"]
        assert acc.loc["normface", tau] == pytest.approx(100 * test)
    assert acc.loc["ce", "none"] == pytest.approx(
        100 * runs["ce-b64-s0"].data.metrics["final/test_acc1"]
    )

    # Table 1: the normface temperature with the higher best validation accuracy
    nf = [runs["normface-t0.1-b64-s0"], runs["normface-t1-b64-s0"]]
    best = max(nf, key=lambda r: r.data.metrics["best/val_acc1"])  # first wins a tie, as idxmax
    table1 = pd.read_csv(folder / "tables" / "best_temperature.csv").set_index("loss")
    assert table1.loc["normface", "digits"] == pytest.approx(
        100 * best.data.metrics["final/test_acc1"]
    )
    chosen_tau = float(table1.loc["normface", "digits temperature"])
    assert chosen_tau == float(best.data.tags["temperature"])

    # Table 3: the last logged NC values of the chosen trials
    nc = pd.read_csv(folder / "tables" / "nc_final.csv").set_index("loss")
    for metric in ("erank_inter", "align_weight_inst", "nc1"):
        value = runs["ce-b64-s0"].data.metrics[f"nc/{metric}"]
        assert nc.loc["ce", metric] == pytest.approx(value)
    assert nc.loc["perfect NC", "erank_inter"] == 9.0

    # Table 7 (II): the reference is the ce trial; each ratio is the chosen trial's
    # steps_to_ref over the reference's own, both read from MLflow (the ce row: 100 %)
    ce = runs["ce-b64-s0"]
    assert best.data.tags[REFERENCE_TAG] == "ce-b64-s0"
    conv = pd.read_csv(folder / "tables" / "convergence.csv")
    part2 = conv[conv.part.str.startswith("(II)")].set_index("loss")
    compared = 0
    for metric in TABLE7_METRICS:
        ref_steps = ce.data.metrics.get(f"steps_to_ref/{metric}")
        steps = best.data.metrics.get(f"steps_to_ref/{metric}")
        if not ref_steps or steps is None:  # never reached, or a zero denominator
            assert math.isnan(part2.loc["normface", f"{metric} %"])
            continue
        assert part2.loc["ce", f"{metric} %"] == pytest.approx(100.0)
        assert part2.loc["normface", f"{metric} %"] == pytest.approx(100 * steps / ref_steps)
        compared += 1
    assert compared >= 1
    # and steps_to_ref itself, recomputed here from the MLflow histories
    hist = {
        key: metric_series(mlf, r.info.run_id, "clock/erank_inter")
        for key, r in (("ce", ce), ("nf", best))
    }
    expected = steps_to_ref(*hist["nf"], *hist["ce"], target=9.0, alpha=0.1)
    assert best.data.metrics.get("steps_to_ref/erank_inter") == expected

    pngs = sorted((folder / "figures").glob("*.png"))
    assert [p.name for p in pngs] == [
        "heatmap_digits.png",
        "nc_by_temperature_digits_normface.png",  # normface's two temperatures
        "nc_curves_digits.png",
        "seeds_digits.png",
    ]
    assert all(p.stat().st_size > 5000 for p in pngs)
    assert (folder / "index.html").read_text().count("data:image/png;base64,") == 4
    parent = [
        r
        for r in mlf.search_runs([exp.experiment_id])
        if r.data.tags.get("ncstudy.role") == "study"
    ][0]
    logged = {a.path for a in mlf.list_artifacts(parent.info.run_id, "report")}
    assert {"report/index.html", "report/figures", "report/tables", "report/metrics.md"} <= logged
