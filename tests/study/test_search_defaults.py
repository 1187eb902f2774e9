"""The search defaults chosen from benchmarks/bench_search_replay.py reach Optuna and ASHA."""

from __future__ import annotations

import pytest

from ncstudy.config import parse_study
from ncstudy.config.errors import SpecError
from ncstudy.search import make_sampler, make_scheduler


def spec(epochs: int = 12, **search: object):
    return parse_study(
        {
            "name": "s",
            "dataset": {"name": "digits", "image_size": 8},
            "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
            "train": {"epochs": epochs, "lr": 0.1},
            "losses": [{"name": "normface"}],
            "search": {
                "n_trials": 12,
                "pruner": "asha",
                "space": {"temperature": [0.1, 0.5]},
                **search,
            },
        }
    )


@pytest.mark.parametrize(("epochs", "grace"), [(12, 4), (100, 33), (2, 1), (1, 1)])
def test_asha_judges_after_a_third_of_the_epochs_by_default(epochs: int, grace: int):
    study = spec(epochs)
    scheduler = make_scheduler(study.search, epochs)
    milestones = [m for m, _ in scheduler._brackets[0]._rungs]
    assert min(milestones) == grace


def test_a_given_grace_period_is_kept():
    study = spec(12, grace_epochs=2)
    rungs = [m for m, _ in make_scheduler(study.search, 12)._brackets[0]._rungs]
    assert sorted(rungs) == [2, 4, 8]


def test_median_rule_takes_the_same_grace():
    study = spec(12, pruner="median")
    assert make_scheduler(study.search, 12)._grace_period == 4


@pytest.mark.parametrize(("n", "startup"), [(12, 3), (8, 3), (20, 5), (60, 10), (400, 10)])
def test_tpe_random_start_is_a_quarter_of_the_trials_3_to_10(n: int, startup: int):
    sampler = make_sampler(spec(n_trials=n).search, spec().losses[0])
    assert sampler._n_startup_trials == startup


def test_a_given_random_start_is_kept_and_bounded():
    assert make_sampler(spec(startup_trials=7).search, spec().losses[0])._n_startup_trials == 7
    for bad in ({"startup_trials": 0}, {"grace_epochs": 0}):
        with pytest.raises(SpecError, match="search."):
            spec(**bad)
