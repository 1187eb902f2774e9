"""The report of a `search:` study: its own view (best trial per loss, every trial with 4-digit
sampled values, pruned trials as pruned, Optuna's history / curves / importances), built from
MLflow alone and, where the study has one, from its Optuna storage. A fake store written with
the real client and the same trial keys, tags and pruning as a real search
(ncstudy.search / ncstudy.trial)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from ncstudy import tracking
from ncstudy.config import parse_study
from ncstudy.report import load_study_data, write_report
from ncstudy.report.cli import main as report_main
from ncstudy.report.search_view import search_tables, studies_by_loss
from ncstudy.search import trial_from_point

STUDY = {
    "name": "srchf",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 3, "warmup_epochs": 1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"batch_size": [64], "seed": [0]},
    "search": {
        "n_trials": 4,
        "space": {
            "temperature": {"low": 0.05, "high": 1.0, "log": True},
            "train.lr": {"low": 0.01, "high": 0.5, "log": True},
        },
    },
}
# (loss index, Optuna number, point, val/acc1 per epoch, outcome)
TRIALS = [
    (0, 0, {"train.lr": 0.01}, [0.3, 0.5, 0.6], "complete"),
    (0, 1, {"train.lr": 0.1}, [0.4, 0.7, 0.9], "complete"),
    (0, 2, {"train.lr": 0.3}, [0.2, 0.25], "pruned"),
    (0, 3, {"train.lr": 0.02}, [0.1], "failed"),
    (1, 0, {"temperature": 0.1, "train.lr": 0.05}, [0.5, 0.6, 0.8], "complete"),
    (1, 1, {"temperature": 0.5, "train.lr": 0.2}, [0.1, 0.15], "pruned"),
    (1, 2, {"temperature": 0.123456789, "train.lr": 0.0123456789}, [0.3, 0.5, 0.7], "complete"),
]


def _log(mlf, exp: str, parent: str, spec, loss_index: int, number: int, point, vals, how):
    trial = trial_from_point(spec, loss_index, point)
    trial = trial.model_copy(update={"key": f"{trial.key}-o{number}"})  # as ncstudy.trial
    run = tracking.ensure_child_run(mlf, exp, parent, trial)
    for epoch, v in enumerate(vals, start=1):
        tracking.log_metrics(mlf, run, {"val/acc1": v, "nc/nc1": 1.0 / epoch}, epoch)
    if how == "complete":
        final = {"final/val_acc1": vals[-1], "final/test_acc1": vals[-1] - 0.05}
        tracking.log_metrics(mlf, run, {**final, "best/val_acc1": max(vals)}, len(vals))
        tracking.finish_run(mlf, run, "FINISHED")
    elif how == "pruned":
        tracking.finish_pruned(mlf, run, "asha", len(vals))
    else:
        tracking.finish_run(mlf, run, "FAILED", "Traceback\nNonFiniteLoss: loss is nan at 1")
    return trial.key


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    out = tmp_path_factory.mktemp("srch")
    spec = parse_study({**STUDY, "output_dir": str(out)})
    folder = out / spec.name
    folder.mkdir()
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    (folder / "study.yaml").write_text(text)
    uri = f"sqlite:///{out}/mlflow.db"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, spec.name, out / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp, spec.name, text)
    keys = [_log(mlf, exp, parent, spec, *t) for t in TRIALS]
    data = load_study_data(spec.name, uri, folder / "study.yaml")
    return SimpleNamespace(out=out, folder=folder, spec=spec, keys=keys, data=data, mlf=mlf)


def test_a_search_report_builds_with_exit_0(store: SimpleNamespace) -> None:
    assert report_main([str(store.folder), "--no-mlflow"]) == 0
    report = store.folder / "report"
    page = (report / "index.html").read_text()
    assert "building it failed" not in page and "could not be drawn" not in page
    figures = {p.stem for p in (report / "figures").glob("*.png")}
    for loss in ("ce", "normface"):
        for kind in ("params", "history", "curves", "importance"):
            assert f"search_{kind}_{loss}" in figures
    assert not any(f.startswith(("heatmap", "nc_curves", "seeds")) for f in figures)


def test_best_trial_per_loss_is_chosen_by_the_objective(store: SimpleNamespace) -> None:
    tables = {t.name: t for t in search_tables(store.data)}
    best = tables["search_best"].data.set_index("loss")
    assert best.loc["ce", "best trial"] == store.keys[1]  # val 0.9, not the failed or pruned
    assert best.loc["ce", "objective"] == pytest.approx(0.9)
    assert best.loc["ce", "test acc1 %"] == pytest.approx(85.0)
    assert best.loc["normface", "best trial"] == store.keys[4]
    assert best.loc["normface", "temperature"] == pytest.approx(0.1)
    assert best.loc["ce", "trials"] == "2 complete, 1 pruned, 1 fail"


def test_every_trial_with_short_values_and_pruned_as_pruned(store: SimpleNamespace) -> None:
    tables = {t.name: t for t in search_tables(store.data)}
    shown = tables["search_trials"].display.set_index("trial")
    assert list(shown.loc[store.keys[:4], "state"]) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    odd = shown.loc[store.keys[6]]
    assert odd["temperature"] == "0.1235" and odd["train.lr"] == "0.01235"  # not 17 digits
    assert odd["val/acc1"] == "70.00"  # in %
    assert shown.loc[store.keys[2], "val/acc1"] == "25.00"  # its value when it was stopped
    assert shown.loc[store.keys[0], "temperature"] == "—"  # ce has no temperature
    failed = tables["failures"].data
    assert list(failed["trial"]) == [store.keys[3]]  # pruned trials are not failures
    imp = tables["search_importance"].data
    assert set(imp["loss"]) == {"ce", "normface"}
    for _, part in imp.groupby("loss"):
        assert part["importance"].sum() == pytest.approx(1.0)


def test_optuna_studies_from_mlflow(store: SimpleNamespace) -> None:
    ce = studies_by_loss(store.data)["ce"]
    states = [t.state for t in ce.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert [t.value for t in ce.trials[:2]] == pytest.approx([0.6, 0.9])
    assert ce.trials[2].intermediate_values == {1: 0.2, 2: 0.25}
    assert ce.best_trial.params == {"train.lr": pytest.approx(0.1)}
    assert ce.direction == optuna.study.StudyDirection.MAXIMIZE


def test_the_optuna_storage_is_used_where_the_study_has_one(
    store: SimpleNamespace, tmp_path: Path
) -> None:
    """The stored trials' states and values win (matched by Optuna number)."""
    import shutil

    folder = tmp_path / store.spec.name
    shutil.copytree(store.folder, folder, ignore=shutil.ignore_patterns("report"))
    url = f"sqlite:///{folder}/optuna.db"
    ot = optuna.create_study(study_name=f"{store.spec.name}-ce", storage=url, direction="maximize")
    dist = optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
    for lr, value in ((0.01, 0.61), (0.1, 0.95), (0.3, None), (0.02, None)):
        ot.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if value is not None else TrialState.PRUNED,
                value=value,
                params={"point/train.lr": lr},
                distributions={"point/train.lr": dist},
                intermediate_values={1: 0.5},
            )
        )
    data = load_study_data(store.spec.name, store.data.tracking_uri, folder / "study.yaml")
    assert data.optuna_storage == url
    ce = studies_by_loss(data)["ce"]
    assert [t.value for t in ce.trials[:2]] == pytest.approx([0.61, 0.95])
    assert ce.trials[3].state == TrialState.PRUNED  # as stored (MLflow says FAILED)
    assert studies_by_loss(data)["normface"].best_value == pytest.approx(0.8)  # from MLflow
    report = write_report(data, tmp_path / "r", log_to_mlflow=False)
    assert pd.read_csv(tmp_path / "r" / "tables" / "search_best.csv").shape[0] == 2
    assert report.index.exists()
