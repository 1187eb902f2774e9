"""The Tuners of a grid and of a search give every trial function one config shape,
`{"trial": <TrialSpec as JSON>}` (no Ray run needed: the plans are checked as built)."""

from __future__ import annotations

from pathlib import Path

from ncstudy.config import TrialSpec, expand, parse_study
from ncstudy.paths import StudyPaths
from ncstudy.targets import StudyTarget
from ncstudy.trial import trial_of
from ncstudy.tuning import grid_plan, search_plan, trial_resources

BASE = {
    "name": "shape",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "train": {"epochs": 2, "lr": 0.1},
    "losses": [{"name": "ce"}, {"name": "normface"}],
    "grid": {"temperature": [0.1, 0.5], "batch_size": [64], "seed": [3]},
}
TARGET = StudyTarget("sqlite:///unused", "1", "parent", "/unused/train")


def test_grid_trials_are_their_resolved_trials(tmp_path: Path) -> None:
    study = parse_study({**BASE, "output_dir": str(tmp_path)})
    trials = expand(study)
    name, (space, options) = grid_plan(trials).name, grid_plan(trials).new()
    assert name == "tune" and set(space) == {"trial"} and options == {"reuse_actors": True}
    configs = [{"trial": t} for t in space["trial"]["grid_search"]]
    assert [trial_of(c) for c in configs] == trials


def test_search_trials_arrive_resolved_with_their_optuna_number(tmp_path: Path) -> None:
    search = {"n_trials": 2, "space": {"temperature": {"low": 0.05, "high": 1.0}}}
    study = parse_study({**BASE, "output_dir": str(tmp_path), "search": search})
    paths = StudyPaths.of(study)
    paths.study_dir.mkdir(parents=True)  # the driver makes it before any Tuner
    plan = search_plan(study, 1, paths, TARGET, left=2)
    assert plan.name == "tune-normface" and trial_resources(plan.probe) == {"cpu": 1}
    space, options = plan.new()
    assert space == {} and options["num_samples"] == 2  # the searcher owns the space
    configs = [options["search_alg"].suggest(tid) for tid in ("a", "b")]
    trials = [trial_of(c) for c in configs]
    assert all(set(c) == {"trial"} for c in configs)
    assert [t.key.rsplit("-", 1)[1] for t in trials] == ["o0", "o1"]
    for t in trials:  # a sampled temperature is the loss's parameter, read back as the trial's
        assert 0.05 <= t.temperature <= 1.0 and t.loss_params["temperature"] == t.temperature
        assert TrialSpec.model_validate(t.model_dump(mode="json")) == t
    assert search_plan(study, 1, paths, TARGET, left=0).new() is None
