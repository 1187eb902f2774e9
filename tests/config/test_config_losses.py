"""The study validator on loss values: every value a grid axis or a search space gives a loss
passes the checks of a plain loss entry, and unknown parameters are answered with the valid
ones, all before Ray starts (a bad value would otherwise fail inside a worker)."""

from __future__ import annotations

import pytest

from ncstudy.config import SpecError, expand, parse_study


def study(**over: object) -> dict:
    """Digits (K = 10) with a 32-d encoder, one ntce and one supcon loss."""
    out: dict = {
        "name": "t",
        "model": {"name": "small_cnn", "feature_dim": 32},
        "losses": [{"name": "ntce"}, {"name": "supcon"}],
        "grid": {"temperature": [0.1], "batch_size": [32], "seed": [0]},
    }
    out.update(over)
    return out


def grid(axes: dict) -> dict:
    return {"temperature": [0.1], "batch_size": [32], "seed": [0], "axes": axes}


def search(space: dict, sampler: str = "random") -> dict:
    return {"n_trials": 2, "sampler": sampler, "space": space}


def rejected(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_study(raw)
    return str(err.value)


BAD_AXES = [
    ({"loss.queue_size": [0, -1]}, "grid.axes.loss.queue_size=-1: losses[0] (ntce)"),
    ({"loss.views": [2, 1]}, "grid.axes.loss.views=1: losses[1] (supcon)"),
    ({"loss.negatives": ["everywhere"]}, "negatives"),
    # the ETF needs d >= K-1 = 9: caught whether the classifier or d comes from an axis
    ({"loss.classifier": ["etf"], "model.feature_dim": [32, 8]}, "model.feature_dim >= 9"),
]


@pytest.mark.parametrize(("axes", "message"), BAD_AXES, ids=[m for _, m in BAD_AXES])
def test_bad_loss_values_on_grid_axes_are_rejected(axes: dict, message: str) -> None:
    assert message in rejected(study(grid=grid(axes)))


def test_etf_dr_under_a_feature_dim_axis_is_checked_at_every_value() -> None:
    raw = study(losses=[{"name": "etf_dr"}], grid=grid({"model.feature_dim": [16, 4]}))
    message = rejected(raw)
    assert "losses[0] (etf_dr) with model.feature_dim=4" in message
    assert "model.feature_dim >= 9" in message


BAD_SPACES = [
    ({"temperature": [-0.1, 0.2]}, "search.space.temperature: temperatures must be"),
    ({"temperature": {"low": 0.0, "high": 1.0}}, "got [0.0]"),
    ({"temperature": {"low": 0.1, "high": float("inf")}}, "high: must be a finite number"),
    ({"temperature": [0.1, "warm"]}, "got ['warm']"),
    ({"loss.queue_size": [-1, 5]}, "search.space.loss.queue_size=-1: losses[0] (ntce)"),
    ({"loss.views": [1]}, "search.space.loss.views=1: losses[1] (supcon)"),
    ({"loss.queue_size": {"low": 0, "high": 64}}, "queue_size is not real-valued"),
    ({"loss.temperature": [0.1]}, "its own axis, `temperature`"),
    ({"train.lr": [0.1, -1.0]}, "search.space.train.lr=-1.0"),
    ({"train.epochs": {"low": 1, "high": 5}}, "train.epochs is not real-valued"),
    ({"train.lrr": [0.1]}, "train has no field 'lrr'"),
    ({"batch_size": [32, 0]}, "batch sizes must be integers >= 1"),
]


@pytest.mark.parametrize(("space", "message"), BAD_SPACES, ids=[m for _, m in BAD_SPACES])
def test_bad_search_space_values_are_rejected(space: dict, message: str) -> None:
    assert message in rejected(study(search=search(space)))


def test_good_values_pass_and_apply_only_to_the_losses_that_have_them() -> None:
    raw = study(
        losses=[{"name": "ce"}, {"name": "ntce"}],
        grid=grid({"loss.queue_size": [0, 64], "loss.classifier": ["learned", "etf"]}),
    )
    trials = expand(parse_study(raw))
    assert {t.loss for t in trials} == {"ce", "ntce"}
    assert len([t for t in trials if t.loss == "ntce"]) == 4
    space = {
        "temperature": {"low": 0.05, "high": 1.0, "log": True},
        "loss.queue_size": [0, 64],
        "train.lr": {"low": 0.01, "high": 1.0, "log": True},
        "batch_size": [32, 64],
    }
    parse_study(study(search=search(space, sampler="tpe")))


def test_an_unknown_parameter_lists_the_valid_ones() -> None:
    message = rejected(study(losses=[{"name": "ntce", "params": {"tau": 0.1}}]))
    assert "tau: unknown parameter" in message
    assert "Valid parameters of 'ntce': classifier (default 'learned')" in message
    assert "queue_size (default 0)" in message
    assert "temperature (default" not in message  # it is not a params entry
    for where in ("grid", "search"):
        raw = (
            study(grid=grid({"loss.tau": [0.1]}))
            if where == "grid"
            else study(search=search({"loss.tau": [0.1]}))
        )
        message = rejected(raw)
        assert "no loss of this study has a parameter 'tau'" in message
        assert "ntce: classifier, negatives, queue_size" in message


def test_an_unknown_loss_lists_the_valid_names() -> None:
    message = rejected(study(losses=[{"name": "arcface"}]))
    assert "unknown loss 'arcface'" in message and "ntce" in message and "supcon" in message
