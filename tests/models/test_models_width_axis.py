"""`grid.axes: {model.width: [...]}` is the network's width (Yaras et al. 2022, Figure 4: the
first convolution's feature maps of ResNet-18): each trial builds a ResNet-18 of that width, its
feature dimension follows (8 x width, no bottleneck) unless the study fixes it."""

from __future__ import annotations

import torch

from ncstudy.config import expand, parse_study
from ncstudy.models import build_model


def study(model: dict) -> dict:
    return {
        "name": "width",
        "dataset": {"name": "cifar10"},
        "model": model,
        "losses": [{"name": "normface"}],
        "grid": {"temperature": [0.1], "axes": {"model.width": [4, 8]}},
    }


def test_width_axis_builds_resnet18_of_each_width() -> None:
    trials = expand(parse_study(study({"name": "resnet18"})))
    assert [t.model.width for t in trials] == [4, 8]
    assert [t.model.feature_dim for t in trials] == [32, 64]  # 8 x width, no bottleneck
    assert [t.key for t in trials] == [
        "normface-t0.1-b128-width4-s0",
        "normface-t0.1-b128-width8-s0",
    ]
    for t in trials:
        net = build_model(t.model, (3, 32, 32))
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs[0].out_channels == t.model.width
        assert max(c.out_channels for c in convs) == 8 * t.model.width
        with torch.no_grad():
            assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 8 * t.model.width)


def test_a_fixed_feature_dim_stays_fixed_across_widths() -> None:
    trials = expand(parse_study(study({"name": "resnet18", "feature_dim": 16})))
    assert [(t.model.width, t.model.feature_dim) for t in trials] == [(4, 16), (8, 16)]
