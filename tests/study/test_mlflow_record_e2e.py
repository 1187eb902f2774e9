"""A tiny search study through Ray Tune (2 Optuna trials of NormFace on digits, 1 epoch), then
what its MLflow store holds and shows: each trial's Optuna number as a tag (and the report's
search view reading it), the measured training imbalance and the long-tail thresholds, the
final network as an MLflow model reloaded with `mlflow.pytorch.load_model` alone (it scores
the logged test accuracy), and MLflow's own runs table in headless Chromium with the study's
trials expanded and metric columns (read from the page's text, and screenshotted)."""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from ncstudy.config import load_study
from ncstudy.data import build_data
from ncstudy.paths import StudyPaths
from ncstudy.report import load_study_data
from ncstudy.report.browser import chromium_binary
from ncstudy.report.mlflow_shot import capture
from ncstudy.report.search_view import search_frame
from ncstudy.search import optuna_storage_url, optuna_study_name

pytestmark = pytest.mark.slow

STUDY = {
    "name": "rec15",
    "description": "two sampled temperatures of NormFace on digits",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 1, "lr": 0.1, "warmup_epochs": 0},
    "losses": [{"name": "normface"}],
    "grid": {"batch_size": [64], "seed": [0]},
    "search": {"n_trials": 2, "space": {"temperature": {"low": 0.1, "high": 1.0, "log": True}}},
    "evaluation": {"nc_metrics": False, "system_metrics": False},
}


@pytest.fixture(scope="module")
def study_store(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Run the study in this process on a new local Ray instance; (study, client, children)."""
    import ray  # ray: only this fixture starts it

    from ncstudy.study import run_study  # with ray: the driver

    tmp = tmp_path_factory.mktemp("rec15")
    path = tmp / "rec15.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp / "runs")}))
    study = load_study(path)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={"env_vars": {"NCSTUDY_THREADS": "1"}},
    )
    try:
        run_study(study)
    finally:
        ray.shutdown()
    mlf = MlflowClient(StudyPaths.of(study).tracking_uri)
    exp = mlf.get_experiment_by_name("rec15")
    runs = mlf.search_runs([exp.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("ncstudy.role") == "trial"}
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children.values())
    return study, mlf, children


def test_search_trials_carry_their_optuna_number(study_store: tuple) -> None:
    study, mlf, children = study_store
    paths = StudyPaths.of(study)
    name = optuna_study_name(study, study.losses[0])
    trials = optuna.load_study(study_name=name, storage=optuna_storage_url(paths.study_dir)).trials
    by_temperature = {round(t.params["point/temperature"], 9): t.number for t in trials}
    tagged = {
        round(float(r.data.params["temperature"]), 9): int(r.data.tags["optuna.trial_number"])
        for r in children.values()
    }
    assert tagged == by_temperature and sorted(tagged.values()) == [0, 1]
    # the report reads the tag: its search view lists the Optuna numbers the runs carry
    data = load_study_data("rec15", paths.tracking_uri, study_yaml=paths.study_dir / "study.yaml")
    frame = search_frame(data.trials, study)
    assert sorted(frame["number"]) == [0, 1]
    assert dict(zip(data.trials["key"], data.trials["optuna_trial"], strict=True)) == {
        k: int(r.data.tags["optuna.trial_number"]) for k, r in children.items()
    }


def test_trials_log_their_training_imbalance_and_longtail_thresholds(study_store: tuple) -> None:
    study, _, children = study_store
    counts = build_data(study.dataset, 0).class_counts  # the training split's class counts
    for run in children.values():
        assert run.data.metrics["data/imbalance_ratio"] == pytest.approx(max(counts) / min(counts))
        params = run.data.params
        assert params["evaluation.longtail.many_threshold"] == "100"
        assert params["evaluation.longtail.few_threshold"] == "20"


def test_the_final_model_reloads_from_mlflow_alone(study_store: tuple) -> None:
    study, mlf, children = study_store
    run = next(iter(children.values()))
    import mlflow.pytorch  # the reload under test, as the README writes it

    with _use_tracking_uri(mlf.tracking_uri):
        net = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.metadata["trial"]["key"] == run.info.run_name
    data = build_data(study.dataset, 0)
    x = torch.stack([xi for xi, _ in data.test])
    y = torch.tensor([int(yi) for _, yi in data.test])
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (len(y), 10)
    accuracy = (logits.argmax(1) == y).float().mean().item()
    assert accuracy == pytest.approx(run.data.metrics["final/test_acc1"], abs=1e-6)


@pytest.mark.skipif(chromium_binary() is None, reason="needs Debian's chromium (.ci/run)")
def test_mlflow_runs_table_shows_the_trials_and_metric_columns(study_store, tmp_path) -> None:  # noqa: ANN001
    study, mlf, children = study_store
    shot = tmp_path / "runs.png"
    view = capture(mlf.tracking_uri, "rec15", shot)
    assert view.trials == sorted(children) and view.missing == []
    assert {"best/val_acc1", "final/test_acc1"} <= set(view.metrics)
    for name in [*children, "best/val_acc1", "final/test_acc1", "rec15"]:
        assert name in view.text, name
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
