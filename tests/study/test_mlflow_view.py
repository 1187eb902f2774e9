"""What MLflow shows of a study, checked through MlflowClient on real SQLite stores without Ray:
the browse link to the runs table, the study's description, the parent run's summary, and no
temperature param for a loss without one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ncstudy import summary, tracking
from ncstudy.config import expand, parse_study
from ncstudy.paths import StudyPaths


def study_of(tmp_path: Path, **over: object):
    raw = {
        "name": "view",
        "description": "does the temperature matter?",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1, 1.0], "batch_size": [32, 64], "seed": [0, 1]},
    }
    raw.update(over)
    return parse_study(raw)


def open_study(study) -> tuple:  # noqa: ANN001
    """The experiment and parent run that the driver opens for `study`."""
    paths = StudyPaths.of(study)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    mlf = tracking.client(paths.tracking_uri)
    exp = tracking.ensure_experiment(
        mlf, study.name, paths.output_dir / "mlartifacts", study.description
    )
    text = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
    parent = tracking.ensure_parent_run(mlf, exp, study.name, text, study.description)
    return paths, mlf, exp, parent


def test_browse_line_links_the_runs_table_of_the_training_view(tmp_path: Path) -> None:
    study = study_of(tmp_path)
    paths = StudyPaths.of(study)
    paths.output_dir.mkdir(parents=True)
    # no experiment yet: the command alone (and asking created no store)
    assert summary.mlflow_ui_command(paths, study.name).startswith("mlflow ui --backend-store")
    assert not (paths.output_dir / "mlflow.db").exists()
    _, mlf, exp, _ = open_study(study)
    command, link = summary.mlflow_ui_command(paths, study.name).splitlines()
    assert command == (
        f"mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1 --port 5000"
    )
    url = f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning"
    assert link.split() == ["then", "open", url]
    assert mlf.get_experiment_by_name("view").experiment_id == exp


def test_server_store_gets_the_link_on_the_server() -> None:
    assert summary.runs_view_url("http://10.0.0.5:5000/", "7") == (
        "http://10.0.0.5:5000/#/experiments/7/runs?workflowType=machine_learning"
    )


def test_description_on_the_experiment_and_the_parent_run(tmp_path: Path) -> None:
    study = study_of(tmp_path)
    _, mlf, exp, parent = open_study(study)
    assert mlf.get_experiment(exp).tags["mlflow.note.content"] == "does the temperature matter?"
    assert mlf.get_run(parent).data.tags["mlflow.note.content"] == "does the temperature matter?"
    # --resume may change the description: both follow it, and the parent run is the same
    again = study_of(tmp_path, description="it does")
    _, _, exp2, parent2 = open_study(again)
    assert (exp2, parent2) == (exp, parent)
    assert mlf.get_experiment(exp).tags["mlflow.note.content"] == "it does"
    assert mlf.get_run(parent).data.tags["mlflow.note.content"] == "it does"


def record_trials(mlf, exp: str, parent: str, trials: list, outcome) -> None:  # noqa: ANN001
    """Child runs as trials leave them: `outcome(trial) -> (status, best val, final test)`."""
    for trial in trials:
        run_id = tracking.ensure_child_run(mlf, exp, parent, trial)
        status, val, test = outcome(trial)
        if val is not None:
            tracking.log_metrics(mlf, run_id, {"best/val_acc1": val, "final/test_acc1": test}, 3)
        tracking.finish_run(mlf, run_id, status)


def test_parent_run_says_which_configuration_and_loss_won(tmp_path: Path) -> None:
    study = study_of(tmp_path)
    _, mlf, exp, parent = open_study(study)
    trials = expand(study)  # ce: 2 batch sizes x 2 seeds; normface: 2 temperatures x 2 x 2

    def outcome(t) -> tuple:  # noqa: ANN001
        if t.loss == "normface" and t.temperature == 1.0 and t.batch_size == 64 and t.seed == 1:
            return "FAILED", None, None
        if t.loss == "ce" and t.batch_size == 32 and t.seed == 1:
            return "KILLED", None, None
        # val: normface t0.1 b32 best on average; test highest elsewhere (never chosen on test)
        val = {("normface", 0.1, 32): 0.9, ("normface", 1.0, 64): 0.95}.get(
            (t.loss, t.temperature, t.batch_size), 0.5 + 0.1 * (t.batch_size == 64)
        )
        val -= 0.2 * t.seed * (t.loss == "normface" and t.batch_size == 32)
        test = 0.99 if (t.loss, t.batch_size) == ("normface", 64) else val - 0.05
        return "FINISHED", val, test

    record_trials(mlf, exp, parent, trials, outcome)
    summary.log_study_outcome(mlf, exp, parent)
    run = mlf.get_run(parent)
    tags, m = run.data.tags, run.data.metrics
    # normface: t0.1 b32 mean val (0.9 + 0.7) / 2 = 0.8 < t1 b64 with its one finished seed 0.95
    assert tags["summary/normface/best_temperature"] == "1.0"
    assert tags["summary/normface/best_batch_size"] == "64"
    assert m["summary/normface/best_val_acc1"] == pytest.approx(0.95)
    assert m["summary/normface/test_acc1"] == pytest.approx(0.99)
    # ce: b64 (0.6) beats b32 (0.5, one seed KILLED); no temperature
    assert tags["summary/ce/best_temperature"] == "n/a"
    assert tags["summary/ce/best_batch_size"] == "64"
    assert m["summary/ce/best_val_acc1"] == pytest.approx(0.6)
    assert m["summary/ce/test_acc1"] == pytest.approx(0.55)
    assert tags["summary/best_loss"] == "normface"
    counts = {k: v for k, v in m.items() if "/trials_" in k}
    assert counts == {
        "summary/ce/trials_finished": 3.0,
        "summary/ce/trials_failed": 0.0,
        "summary/ce/trials_killed": 1.0,
        "summary/ce/trials_running": 0.0,
        "summary/normface/trials_finished": 7.0,
        "summary/normface/trials_failed": 1.0,
        "summary/normface/trials_killed": 0.0,
        "summary/normface/trials_running": 0.0,
    }


def test_without_validation_no_configuration_is_chosen(tmp_path: Path) -> None:
    study = study_of(tmp_path, losses=[{"name": "normface"}])
    _, mlf, exp, parent = open_study(study)
    record_trials(mlf, exp, parent, expand(study), lambda t: ("FINISHED", None, None))
    summary.log_study_outcome(mlf, exp, parent)
    tags = mlf.get_run(parent).data.tags
    assert tags["summary/normface/best"].startswith("none chosen")
    assert "summary/normface/best_temperature" not in tags and "summary/best_loss" not in tags


def test_a_loss_without_temperature_logs_no_temperature_param(tmp_path: Path) -> None:
    study = study_of(tmp_path, grid={"temperature": [0.1], "batch_size": [64]})
    _, mlf, exp, parent = open_study(study)
    ce, normface = expand(study)
    runs = {
        t.loss: mlf.get_run(tracking.ensure_child_run(mlf, exp, parent, t)) for t in (ce, normface)
    }
    assert "temperature" not in runs["ce"].data.params
    assert runs["ce"].data.tags["temperature"] == "none"
    assert runs["normface"].data.params["temperature"] == "0.1"
    assert runs["ce"].data.params["batch_size"] == "64"  # the rest is logged as before
