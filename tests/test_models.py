"""Encoders, parametrised over the registry: forward/backward, shapes, dtypes; the ResNets'
parameter counts against torchvision's, the stems' resolutions, bottleneck and SyncBN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ncstudy.models import build_model, list_models
from ncstudy.spec import ModelSpec

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
    for mode in (True, False):
        assert model.train(mode)(torch.randn(2, 3, 16, 16)).shape == (2, 64)
