"""What a trained trial leaves in its MLflow run, checked through MlflowClient on a real SQLite
store (the worker loop in this process, no Ray): its datasets as inputs with their split sizes,
MLflow's system metrics (off with `evaluation.system_metrics: false`), and the final network
as the MLflow model `model` that `load_trial_model` reloads with the same predictions."""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from torch.utils.data import DataLoader

from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.context import CHECKPOINT_FILE, LocalContext, load_state_file
from ncstudy.data import build_data
from ncstudy.losses import build_loss
from ncstudy.mlflow_model import model_uri
from ncstudy.models import build_model
from ncstudy.runlog import RunLogger
from ncstudy.targets import RunTarget
from ncstudy.train import Network, train_loop
from ncstudy.trained import load_trial_model, predict


def trained_run(tmp_path: Path, loss: str, system_metrics: bool) -> tuple:
    """Train a 2-epoch digits trial into its own child run; (client, run id, trial, checkpoint
    folder)."""
    study = parse_study(
        {
            "name": "rec",
            "dataset": {"name": "digits", "image_size": 8},
            "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
            "train": {"epochs": 2, "lr": 0.1, "warmup_epochs": 1},
            "losses": [{"name": loss}],
            "grid": {"temperature": [0.2], "batch_size": [64]},
            "evaluation": {"system_metrics": system_metrics, "nc_metrics": False},
        }
    )
    trial = expand(study)[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, "rec", tmp_path / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp, "rec", "name: rec\n")
    run_id = tracking.ensure_child_run(mlf, exp, parent, trial)
    ckpt = tmp_path / "ckpt"
    train_loop(trial, LocalContext(ckpt), RunTarget(uri, run_id))
    return mlf, run_id, trial, ckpt


@pytest.fixture(scope="module")
def normface_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # several samples in seconds
    try:
        yield trained_run(tmp_path_factory.mktemp("nf"), "normface", system_metrics=True)
    finally:
        mp.undo()


def test_datasets_are_logged_with_their_split_sizes(normface_run: tuple) -> None:
    mlf, run_id, trial, _ = normface_run
    data = build_data(trial.dataset, trial.seed)
    expected = {
        "training": len(data.train_eval),
        "validation": len(data.val),
        "test": len(data.test),
    }
    assert sum(expected.values()) == 1797 and min(expected.values()) > 0  # sklearn's digits
    inputs = mlf.get_run(run_id).inputs.dataset_inputs
    got = {}
    for item in inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        got[context] = json.loads(item.dataset.profile)["num_rows"]
        assert item.dataset.name == "digits" and "digits" in item.dataset.source
    assert got == expected
    assert len({i.dataset.digest for i in inputs}) == 3  # one per split


def test_system_metrics_are_logged_while_the_trial_trains(normface_run: tuple) -> None:
    mlf, run_id, _, _ = normface_run
    metrics = mlf.get_run(run_id).data.metrics
    cpu = mlf.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 1 and all(0.0 <= m.value <= 100.0 for m in cpu)
    assert "system/system_memory_usage_megabytes" in metrics


def test_reloaded_model_predicts_like_the_final_checkpoint(normface_run: tuple) -> None:
    mlf, run_id, trial, ckpt = normface_run
    with _use_tracking_uri(mlf.tracking_uri):  # the MLflow model `model` of the run
        info = mlflow.models.get_model_info(model_uri(run_id))
    assert info.flavors.keys() >= {"pytorch", "python_function"}
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 1, 8, 8)
    net, reloaded = load_trial_model(run_id, mlf.tracking_uri)
    assert reloaded == trial
    # independently: the network rebuilt from the loop's own last checkpoint
    data = build_data(trial.dataset, trial.seed)
    encoder = build_model(trial.model, data.input_shape)
    criterion = build_loss(
        trial.loss, trial.loss_params, feature_dim=encoder.feature_dim, num_classes=10
    )
    ref = Network(encoder, criterion)
    ref.load_state_dict(load_state_file(ckpt / CHECKPOINT_FILE)["model"])
    ref.eval()
    x = torch.cat([xb for xb, _ in DataLoader(data.test, batch_size=512)])
    with torch.no_grad():
        expected = ref.criterion.scores(ref.encoder(x)).argmax(1)
    got = predict(net, x)
    assert torch.equal(got, expected)
    # a trained network, not a fresh one: its test accuracy is the one the run logged
    y = torch.tensor([int(yb) for _, yb in data.test])
    logged = mlf.get_run(run_id).data.metrics["final/test_acc1"]
    assert (got == y).float().mean().item() == pytest.approx(logged, abs=1e-6)


def test_system_metrics_can_be_switched_off(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    mlf, run_id, _, _ = trained_run(tmp_path, "ce", system_metrics=False)
    metrics = mlf.get_run(run_id).data.metrics
    assert "final/test_acc1" in metrics
    assert not [k for k in metrics if k.startswith("system/")]


def test_a_run_without_a_model_says_so(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, "none", tmp_path / "mlartifacts")
    run = mlf.create_run(exp)
    with pytest.raises(ValueError, match="has no readable model/ artifact"):
        load_trial_model(run.info.run_id, uri)


def test_a_trial_shorter_than_one_interval_still_gets_its_sample(
    tmp_path: Path,
    monkeypatch,  # noqa: ANN001
) -> None:
    """MLflow's own loop logs only complete intervals; the last one is logged at the end."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "60")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    run = mlf.create_run(tracking.ensure_experiment(mlf, "short", tmp_path / "mlartifacts"))
    log = RunLogger(RunTarget(uri, run.info.run_id), is_main=True)
    with log.system_metrics(True):
        time.sleep(0.3)
    history = mlf.get_metric_history(run.info.run_id, "system/system_memory_usage_megabytes")
    assert [m.step for m in history] == [0] and history[0].value > 0
    assert not RunLogger(RunTarget(uri, run.info.run_id), is_main=False).run  # rank > 0: none


def test_a_retried_trial_logs_its_inputs_once(tmp_path: Path) -> None:
    """A retry or --resume logs the inputs again: MLflow keeps one per split (an empty split,
    `val_fraction: 0`, logs none)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = tracking.client(uri)
    run = mlf.create_run(tracking.ensure_experiment(mlf, "retry", tmp_path / "mlartifacts"))
    log = RunLogger(RunTarget(uri, run.info.run_id), is_main=True)
    for _ in range(2):
        log.inputs({"name": "digits", "root": None}, {"train": 1437, "val": 0, "test": 360})
    inputs = mlf.get_run(run.info.run_id).inputs.dataset_inputs
    assert sorted(json.loads(i.dataset.profile)["num_rows"] for i in inputs) == [360, 1437]
