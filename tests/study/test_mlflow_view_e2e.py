"""A small digits study through Ray Tune, then everything MLflow should show of it, read back
through MlflowClient: the link to the runs table, the description on the experiment and the
parent run, the study's outcome on the parent run, no temperature param for CE, each trial's
datasets, system metrics and final model (reloaded: it scores the test accuracy the run logged)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.config import load_study
from ncstudy.data import build_data
from ncstudy.paths import StudyPaths
from ncstudy.summary import mlflow_ui_command
from ncstudy.trained import load_trial_model, predict

pytestmark = pytest.mark.slow

STUDY = {
    "name": "view",
    "description": "NormFace against CE on digits",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 2, "lr": 0.1, "warmup_epochs": 1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"temperature": [0.1, 1.0], "batch_size": [64], "seed": [0]},
    "evaluation": {"nc_metrics": False},
}


@pytest.fixture(scope="module")
def study_store(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Run the study in this process on a new local Ray instance; (study, client, rows)."""
    import ray

    from ncstudy.study import run_study

    tmp = tmp_path_factory.mktemp("view")
    path = tmp / "view.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp / "runs")}))
    study = load_study(path)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={
            "env_vars": {"NCSTUDY_THREADS": "1", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
        },
    )
    try:
        rows = run_study(study)
    finally:
        ray.shutdown()
    return study, MlflowClient(StudyPaths.of(study).tracking_uri), rows


def runs_by_role(mlf: MlflowClient, experiment_id: str) -> tuple:
    runs = mlf.search_runs([experiment_id])
    parent = [r for r in runs if r.data.tags.get("ncstudy.role") == "study"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("ncstudy.role") == "trial"}
    assert len(parent) == 1
    return parent[0], children


def test_study_lands_on_its_runs_table_with_description_and_outcome(study_store: tuple) -> None:
    study, mlf, rows = study_store
    assert [r.status for r in rows] == ["FINISHED"] * 3, rows
    exp = mlf.get_experiment_by_name("view")
    link = mlflow_ui_command(StudyPaths.of(study), "view").splitlines()[-1].split()[-1]
    assert link == (
        f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
        "?workflowType=machine_learning"
    )
    assert exp.tags["mlflow.note.content"] == "NormFace against CE on digits"
    parent, children = runs_by_role(mlf, exp.experiment_id)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags["mlflow.note.content"] == "NormFace against CE on digits"
    # the outcome, computed here from the children: normface's temperature chosen on val
    nf = {k: r for k, r in children.items() if k.startswith("normface")}
    best = max(nf.values(), key=lambda r: r.data.metrics["best/val_acc1"])
    assert tags["summary/normface/best_temperature"] == best.data.tags["temperature"]
    assert metrics["summary/normface/best_val_acc1"] == best.data.metrics["best/val_acc1"]
    assert metrics["summary/normface/test_acc1"] == best.data.metrics["final/test_acc1"]
    ce = children["ce-b64-s0"].data.metrics
    assert tags["summary/ce/best_temperature"] == "n/a"
    assert metrics["summary/ce/test_acc1"] == ce["final/test_acc1"]
    assert metrics["summary/normface/trials_finished"] == 2.0
    assert metrics["summary/ce/trials_finished"] == 1.0
    assert metrics["summary/ce/trials_failed"] == 0.0
    winner = "ce" if ce["best/val_acc1"] > best.data.metrics["best/val_acc1"] else "normface"
    assert tags["summary/best_loss"] == winner
    assert "temperature" not in children["ce-b64-s0"].data.params
    assert children["normface-t0.1-b64-s0"].data.params["temperature"] == "0.1"


def test_each_trial_logs_its_data_machine_and_model(study_store: tuple) -> None:
    study, mlf, _ = study_store
    exp = mlf.get_experiment_by_name("view")
    _, children = runs_by_role(mlf, exp.experiment_id)
    for name, run in children.items():
        contexts = {
            {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
            for i in mlf.get_run(run.info.run_id).inputs.dataset_inputs
        }
        assert sorted(contexts) == ["test", "training", "validation"], name
        sizes = [json.loads(contexts[c].profile)["num_rows"] for c in sorted(contexts)]
        assert sum(sizes) == 1797  # sklearn's digits, every sample in one split
        assert mlf.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    run = children["normface-t1-b64-s0"]
    net, trial = load_trial_model(run.info.run_id, mlf.tracking_uri)
    assert trial.key == "normface-t1-b64-s0" and trial.temperature == 1.0
    data = build_data(trial.dataset, trial.seed)
    x = torch.stack([xi for xi, _ in data.test])
    y = torch.tensor([int(yi) for _, yi in data.test])
    accuracy = (predict(net, x) == y).float().mean().item()
    assert accuracy == pytest.approx(run.data.metrics["final/test_acc1"], abs=1e-6)
