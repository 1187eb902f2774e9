"""The shipped CPU-scale Table 7 study (studies/convergence_digits.yaml) run for real (Ray Tune,
training, MLflow), and its report's convergence table checked against the clock histories in
MLflow: Table 7's layout, (I) steps_to_95 over the trial's iterations, (II) steps_to_ref over
the CE trial's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.config import load_study
from ncstudy.convergence_ref import metric_series
from ncstudy.metrics import metric_target, steps_to_95
from ncstudy.report.cli import main as report_main
from ncstudy.report.table7 import TABLE7_COLUMNS, TABLE7_METRICS

pytestmark = pytest.mark.slow
STUDY = Path(__file__).resolve().parents[2] / "studies" / "convergence_digits.yaml"


def _run_study(path: Path) -> list:
    """Run the study in this process on a new local Ray instance (never another cluster)."""
    import ray

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


def test_the_cpu_table7_study_and_its_report(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    study = yaml.safe_load(STUDY.read_text())
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**study, "output_dir": str(out)}))
    rows = _run_study(path)
    assert [r.status for r in rows] == ["FINISHED"] * 4, rows
    assert report_main([str(out / study["name"])]) == 0
    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name(study["name"])
    runs = {
        r.data.tags["ncstudy.trial_key"]: r
        for r in mlf.search_runs([exp.experiment_id])
        if "ncstudy.trial_key" in r.data.tags
    }
    conv = pd.read_csv(out / study["name"] / "report" / "tables" / "convergence.csv")
    shown = (out / study["name"] / "report" / "tables" / "convergence.md").read_text()
    assert all(f"| {name} |" in shown for name in TABLE7_COLUMNS.values())
    part1 = conv[conv.part.str.startswith("(I)")].set_index("loss")
    part2 = conv[conv.part.str.startswith("(II)")].set_index("loss")
    every = study["evaluation"]["convergence"]["every_steps"]
    alpha = study["evaluation"]["convergence"]["ewma_alpha"]
    ce = runs["ce-b64-s0"].data.metrics
    for key, run in runs.items():
        loss, metrics = key.split("-")[0], run.data.metrics
        total = metrics["steps_total"]
        assert total > 0 and total % study["train"]["epochs"] == 0  # iterations, all epochs
        for m in TABLE7_METRICS:
            steps, values = metric_series(mlf, run.info.run_id, f"clock/{m}")
            assert steps == list(range(0, int(total) + 1, every)), (key, m)
            # (I): steps_to_95 recomputed from the clock history, over the trial's iterations
            reached = steps_to_95(steps, values, metric_target(m, 10), alpha)
            assert metrics.get(f"steps_to_95/{m}") == (None if reached is None else reached)
            want = np.nan if reached is None else 100 * reached / total
            assert part1.loc[loss, f"{m} %"] == pytest.approx(want, nan_ok=True), (key, m)
            # (II): over the CE trial's own steps_to_ref (undefined when CE's is 0)
            mine, ref = metrics.get(f"steps_to_ref/{m}"), ce.get(f"steps_to_ref/{m}")
            want = np.nan if mine is None or not ref else 100 * mine / ref
            assert part2.loc[loss, f"{m} %"] == pytest.approx(want, nan_ok=True), (key, m)
