"""A loss's own `ufm:` fields: the normalised (spherical normface) and the regularised (ce with a
feature penalty) UFM in one study, as Yaras et al. 2022 compare them (Figure 5)."""

from __future__ import annotations

import pytest

from ncstudy.config import SpecError, expand, parse_study


def study(**extra: object) -> dict:
    return {
        "name": "both",
        "model": {"name": "ufm"},
        "ufm": {"K": 10, "d": 2, "n_per_class": 5, "iterations": 20, "memory": 0},
        "losses": [
            {"name": "normface"},
            {"name": "ce", "ufm": {"variant": "regularized", "lambda_h": 0.005}},
        ],
        "grid": {"temperature": [1.0], "seed": [0, 1]},
        "evaluation": {"every": 10},
        **extra,
    }


def test_each_loss_gets_its_variant() -> None:
    trials = expand(parse_study(study()))
    got = [(t.key, t.ufm.variant, t.ufm.lambda_h) for t in trials]
    assert got == [
        ("normface-t1-s0", "spherical", 0.01),
        ("normface-t1-s1", "spherical", 0.01),
        ("ce-s0", "regularized", 0.005),
        ("ce-s1", "regularized", 0.005),
    ]
    assert all(t.ufm.memory == 0 and t.ufm.K == 10 for t in trials)


def test_bad_loss_ufm_fields_are_refused() -> None:
    bad = study()
    bad["losses"][1]["ufm"] = {"lambda_q": 1}
    with pytest.raises(SpecError, match="lambda_q: unknown field"):
        parse_study(bad)
    bad["losses"][1]["ufm"] = {}  # ce in the (default) spherical variant
    with pytest.raises(SpecError, match="regularized"):
        parse_study(bad)
    net = {
        "name": "net",
        "losses": [{"name": "ce", "ufm": {"variant": "regularized"}}],
    }
    with pytest.raises(SpecError, match="applies to UFM studies only"):
        parse_study(net)
