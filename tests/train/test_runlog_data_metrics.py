"""`data/imbalance_ratio` from the training class counts, and a search trial's Optuna tag from
its key (grid keys end with the seed, `-s0`, and carry none)."""

from __future__ import annotations

import pytest

from ncstudy.config import expand, parse_study
from ncstudy.runlog import data_metrics
from ncstudy.search import search_trial
from ncstudy.search_tags import OPTUNA_TRIAL_TAG, optuna_trial, search_tags

STUDY = {
    "name": "tags",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "normface"}],
    "grid": {"temperature": [0.1], "batch_size": [64], "seed": [0]},
}


@pytest.mark.parametrize(
    ("counts", "ratio"),
    [((500, 50, 5), 100.0), ((7, 7, 7), 1.0), ((40, 0, 10), 4.0)],  # an empty class left out
)
def test_imbalance_ratio_is_largest_over_smallest_count(counts: tuple, ratio: float) -> None:
    assert data_metrics(counts) == {"data/imbalance_ratio": ratio}
    assert data_metrics([0, 0]) == {}


def test_only_search_trials_are_tagged_with_their_optuna_number() -> None:
    spec = parse_study(STUDY)
    (grid,) = expand(spec)
    assert search_tags(grid.key) == {}
    sampled = search_trial(spec, 0, {"temperature": 0.3}, 12)
    tags = search_tags(sampled.key)
    assert tags == {OPTUNA_TRIAL_TAG: "12"} and optuna_trial(tags) == 12
    assert optuna_trial({}) is None
