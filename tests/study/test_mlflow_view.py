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
