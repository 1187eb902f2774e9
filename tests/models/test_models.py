"""Encoders, parametrised over the registry: forward/backward, shapes, dtypes; the ResNets'
parameter counts against torchvision's, the stems' resolutions, bottleneck and SyncBN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ncstudy.config import ModelSpec
from ncstudy.models import build_model, list_models

torch.set_num_threads(1)


def small_input(name: str) -> tuple[int, ...]:
    return (3, 64, 64) if name.startswith("resnet") and "cifar" not in name else (3, 16, 16)


@pytest.mark.parametrize("name", list_models())
def test_every_encoder_maps_images_to_feature_dim(name: str) -> None:
    torch.manual_seed(0)
    shape = small_input(name)
    model = build_model(ModelSpec(name=name, width=4, feature_dim=12), shape)
    x = torch.randn(3, *shape)
    h = model(x)
    assert model.feature_dim == 12 and h.shape == (3, 12) and h.dtype == torch.float32
    h.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_resnet_parameter_counts_match_torchvision() -> None:
    tv = pytest.importorskip("torchvision.models")
    for depth, tv_fn, pooled in [(18, tv.resnet18, 512), (50, tv.resnet50, 2048)]:
        ref = tv_fn()
        expected = sum(p.numel() for p in ref.parameters()) - sum(
            p.numel() for p in ref.fc.parameters()
        )
        ours = build_model(
            ModelSpec(name=f"resnet{depth}", width=64, feature_dim=pooled), (3, 64, 64)
        )
        assert sum(p.numel() for p in ours.parameters()) == expected
        # the CIFAR stem: a 3x3 conv (27 x 64 weights) instead of 7x7 (147 x 64)
        cifar = build_model(
            ModelSpec(name=f"resnet{depth}_cifar", width=64, feature_dim=pooled), (3, 32, 32)
        )
        assert sum(p.numel() for p in cifar.parameters()) == expected - (147 - 27) * 64


@pytest.mark.parametrize(
    ("name", "side", "final"), [("resnet18_cifar", 32, 4), ("resnet18", 64, 2)]
)
def test_stems_set_the_final_resolution(name: str, side: int, final: int) -> None:
    # CIFAR: no stride in the stem, three stride-2 stages (32 -> 4); ImageNet: /32 (64 -> 2)
    model = build_model(ModelSpec(name=name, width=4, feature_dim=32), (3, side, side))
    assert model.body(torch.randn(1, 3, side, side)).shape[-1] == final
    has_max_pool = any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert has_max_pool == (name == "resnet18")


def test_bottleneck_only_when_feature_dim_differs() -> None:
    same = build_model(ModelSpec(name="resnet18_cifar", width=4, feature_dim=32), (3, 16, 16))
    assert isinstance(same.bottleneck, nn.Identity)  # pooled width 8 x width = 32
    small = build_model(ModelSpec(name="resnet18_cifar", width=4, feature_dim=5), (3, 16, 16))
    linear = [m for m in small.bottleneck.modules() if isinstance(m, nn.Linear)]
    assert linear[0].in_features == 32 and linear[0].out_features == 5


def test_sync_bn_converts_every_batchnorm() -> None:
    model = build_model(ModelSpec(name="resnet18_cifar", width=4, sync_bn=True), (3, 16, 16))
    kinds = {type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.SyncBatchNorm}
    # without a process group SyncBatchNorm behaves as BatchNorm, in training and evaluation
    for mode in (True, False):  # feature_dim defaults to the pooled width 8 x 4 = 32
        assert model.train(mode)(torch.randn(2, 3, 16, 16)).shape == (2, 32)


@pytest.mark.parametrize(
    ("name", "pooled"),
    [("resnet18", 512), ("resnet34_cifar", 512), ("resnet50", 2048), ("resnet152_cifar", 2048)],
)
def test_resnet_defaults_are_the_standard_networks(name: str, pooled: int) -> None:
    # `model: {name: resnet50}` is the standard ResNet-50: width 64, no bottleneck, 2048-d
    spec = ModelSpec(name=name)
    assert (spec.width, spec.feature_dim) == (64, pooled)
    assert spec.model_fields_set == {"name"}  # defaults, not settings: a name axis re-derives
    if name in ("resnet18", "resnet50"):  # build the two the paper uses (the others are big)
        model = build_model(spec, (3, 64, 64))
        assert isinstance(model.bottleneck, nn.Identity) and model.pooled_dim == pooled
    # explicit values are kept; width alone scales the default feature_dim with it
    assert ModelSpec(name=name, width=8, feature_dim=10).feature_dim == 10
    assert ModelSpec(name=name, width=32).feature_dim == pooled // 2


def test_small_cnn_keeps_its_defaults_and_a_name_axis_rederives_them() -> None:
    from ncstudy.config import expand, parse_study

    assert (ModelSpec().width, ModelSpec().feature_dim) == (32, 64)
    study = parse_study(
        {
            "name": "axis",
            "losses": [{"name": "ce"}],
            "model": {"name": "resnet18_cifar"},
            "grid": {"axes": {"model.name": ["resnet18_cifar", "resnet50_cifar"]}},
        }
    )
    dims = {t.model.name: (t.model.width, t.model.feature_dim) for t in expand(study)}
    assert dims == {"resnet18_cifar": (64, 512), "resnet50_cifar": (64, 2048)}
    # a value the YAML sets stays set for every model of the axis
    pinned = parse_study(
        {
            "name": "axis",
            "losses": [{"name": "ce"}],
            "model": {"name": "resnet18_cifar", "feature_dim": 128},
            "grid": {"axes": {"model.name": ["resnet18_cifar", "resnet50_cifar"]}},
        }
    )
    assert {t.model.feature_dim for t in expand(pinned)} == {128}
