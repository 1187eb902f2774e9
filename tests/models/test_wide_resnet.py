"""The paper-004 WideResNets: parameter counts against torchvision's wide_resnet50_2 and
resnet18/50 (built on the meta device: no memory, no init cost), d fixed at any width, the
stems' resolutions and the ModelSpec defaults."""

from __future__ import annotations

import pytest
import torch

from ncstudy.config import ModelSpec
from ncstudy.models import build_model
from ncstudy.models.wide_resnet import WideBottleneck

torch.set_num_threads(1)


def _count(model: torch.nn.Module, skip: torch.nn.Module | None = None) -> int:
    total = sum(p.numel() for p in model.parameters())
    return total - (sum(p.numel() for p in skip.parameters()) if skip is not None else 0)


def _ours(name: str, width: int | None = None, shape=(3, 224, 224)) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(ModelSpec(name=name, width=width), shape)


@pytest.mark.parametrize(
    ("name", "width", "tv_name"),
    [
        ("wide_resnet50", 128, "wide_resnet50_2"),  # the paper's WideResNet50-2
        ("wide_resnet50", 64, "resnet50"),  # multiplier 1 of the plain ResNet-50
        ("wide_resnet18", 64, "resnet18"),
    ],
)
def test_parameter_counts_match_torchvision(name: str, width: int, tv_name: str) -> None:
    tv = pytest.importorskip("torchvision.models")
    with torch.device("meta"):
        ref = getattr(tv, tv_name)()
    assert _count(_ours(name, width)) == _count(ref, skip=ref.fc)


def test_cifar_stem_differs_only_in_the_first_convolution() -> None:
    imagenet, cifar = _ours("wide_resnet50", 32), _ours("wide_resnet50_cifar", 32, (3, 32, 32))
    assert _count(imagenet) - _count(cifar) == 64 * 3 * (7 * 7 - 3 * 3)


@pytest.mark.parametrize(("name", "d"), [("wide_resnet50_cifar", 2048), ("wide_resnet18", 512)])
def test_feature_dim_is_fixed_by_the_architecture(name: str, d: int) -> None:
    spec = ModelSpec(name=name)
    assert (spec.width, spec.feature_dim) == (128, d)  # the "-2" network by default
    counts = []
    for width in (16, 32, 64, 128):  # the paper's multipliers 0.25, 0.5, 1, 2
        model = _ours(name, width, (3, 32, 32))
        assert ModelSpec(name=name, width=width).feature_dim == d
        assert model.feature_dim == model.pooled_dim == d
        counts.append(_count(model))
    assert counts == sorted(counts) and len(set(counts)) == 4  # wider: more parameters


def test_inner_width_scales_and_outputs_do_not() -> None:
    model = _ours("wide_resnet50_cifar", 16, (3, 32, 32))
    blocks = [m for m in model.body if isinstance(m, WideBottleneck)]
    assert [b.body[0].out_channels for b in blocks] == [16] * 3 + [32] * 4 + [64] * 6 + [128] * 3
    assert [b.out_channels for b in blocks] == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3


@pytest.mark.parametrize(
    ("name", "shape", "spatial"),
    [("wide_resnet50_cifar", (3, 32, 32), 4), ("wide_resnet18", (3, 84, 84), 3)],
)
def test_forward_resolution_and_backward(name: str, shape: tuple, spatial: int) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(name=name, width=8), shape)
    x = torch.randn(2, *shape)
    assert model.body(x).shape[-1] == spatial  # CIFAR: 32 / 8; miniImageNet 84: /4 then /8
    h = model(x)
    assert h.shape == (2, model.feature_dim)
    h.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
