"""--resume of a study whose Ray Tune state was saved before every trial had one config shape
(issue #13): a search's saved state is refused with what to do (exit 2); a grid's old trial
configs still name and resolve their trials."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from ray import tune

from ncstudy import tracking
from ncstudy.config import expand, parse_study
from ncstudy.paths import StudyError, StudyPaths
from ncstudy.resume import check_can_start
from ncstudy.run import main
from ncstudy.search import tune_space
from ncstudy.trial import run_trial, trial_of
from ncstudy.tuning import trial_key


def search_study(tmp_path: Path) -> dict:
    return {
        "name": "s",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "train": {"epochs": 2, "lr": 0.1},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"batch_size": [64], "seed": [7]},
        "search": {"n_trials": 2, "space": {"temperature": {"low": 0.05, "high": 1.0}}},
    }


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.client(f"sqlite:///{path}").search_experiments()
    return path


def started(raw: dict, empty_store: Path) -> StudyPaths:
    """What a started study leaves: its MLflow parent run with the YAML, and its marker."""
    study = parse_study(raw)
    paths = StudyPaths.of(study)
    paths.output_dir.mkdir(parents=True)
    shutil.copy(empty_store, paths.output_dir / "mlflow.db")
    mlf = tracking.client(paths.tracking_uri)
    experiment_id = tracking.ensure_experiment(mlf, study.name, paths.output_dir / "mlartifacts")
    text = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
    tracking.ensure_parent_run(mlf, experiment_id, study.name, text)
    paths.study_dir.mkdir()
    (paths.study_dir / "study.yaml").write_text(text)
    return paths


def save_tuner(paths: StudyPaths, name: str, param_space: dict) -> None:
    """Ray Tune saves its Tuner (tuner.pkl, with the param space's keys) when it is made."""
    trainable = tune.with_resources(run_trial, {"cpu": 1})
    run_config = tune.RunConfig(name=name, storage_path=paths.storage)
    tune.Tuner(trainable, param_space=param_space, run_config=run_config)
    assert tune.Tuner.can_restore(f"{paths.storage}/{name}")


def test_a_search_saved_in_the_old_shape_is_refused_with_what_to_do(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = search_study(tmp_path)
    paths = started(raw, empty_store)
    study = parse_study(raw)
    env = {"tracking_uri": paths.tracking_uri, "experiment_id": "1", "parent_run_id": "p"}
    old_space = {
        "point": tune_space(study.search, study.losses[1]),
        "study": study.model_dump(mode="json"),
        "loss_index": 1,
        "env": {**env, "train_storage": paths.train_storage},
    }
    save_tuner(paths, "tune-normface", old_space)
    with pytest.raises(StudyError) as info:
        check_can_start(study, True, paths)
    message = str(info.value)
    assert paths.tune_path("normface") in message and "earlier ncstudy" in message
    assert "loss_index, point, study" in message and "move" in message
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main([str(path), "--resume"]) == 2
    assert "run --resume again" in capsys.readouterr().err


def test_a_search_saved_in_the_one_shape_resumes(tmp_path: Path, empty_store: Path) -> None:
    raw = search_study(tmp_path)
    paths = started(raw, empty_store)
    save_tuner(paths, "tune-normface", {})  # a search's Tuner: its searcher owns the space
    check_can_start(parse_study(raw), True, paths)  # no error


def test_a_grid_trial_saved_in_the_old_shape_still_resolves(tmp_path: Path) -> None:
    """A grid's old trial config held the resolved trial and an "env" the trial function no
    longer reads: Tune's restored trials keep their names and trials."""
    raw = {k: v for k, v in search_study(tmp_path).items() if k != "search"}
    (trial, *_) = expand(parse_study(raw))
    old = {"trial": trial.model_dump(mode="json"), "env": {"tracking_uri": "sqlite:///x"}}
    assert trial_of(old) == trial
    assert trial_key(type("TuneTrial", (), {"config": old})()) == trial.key
