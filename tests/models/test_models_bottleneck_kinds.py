"""model.bottleneck: `linear` (Jiang et al.: a linear layer with bias, no BN) and the default
`linear_bn`, on the ResNets and the small CNN; K > d + 1 (CIFAR-100 shapes at d = 10)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ncstudy.config.sections import ModelSpec
from ncstudy.models import build_model


def norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm1d)]


@pytest.mark.parametrize(("name", "head"), [("resnet18_cifar", "bottleneck"), ("small_cnn", "fc")])
def test_linear_bottleneck_is_an_affine_map_of_the_pooled_features(name: str, head: str) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(name=name, feature_dim=10, width=8, bottleneck="linear")
    model = build_model(spec, (3, 16, 16)).eval()
    layer = getattr(model, head)
    assert norms(layer) == [] and len(layer) == 1 and layer[0].bias is not None
    x = torch.randn(5, 3, 16, 16)
    pooled = model.pool(model.body(x)).flatten(1)
    expected = pooled @ layer[0].weight.T + layer[0].bias
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (5, 10) and model.feature_dim == 10


def test_default_bottleneck_is_linear_then_batch_norm() -> None:
    model = build_model(ModelSpec(name="resnet18_cifar", feature_dim=10, width=8), (3, 16, 16))
    assert ModelSpec(name="resnet18_cifar").bottleneck == "linear_bn"
    assert model.bottleneck[0].bias is None and len(norms(model.bottleneck)) == 1
    # the state_dict keys of earlier checkpoints are unchanged
    assert {"bottleneck.0.weight", "bottleneck.1.running_mean"} <= set(model.state_dict())


def test_unknown_bottleneck_names_the_valid_kinds() -> None:
    with pytest.raises(ValidationError, match="linear_bn"):
        ModelSpec(name="resnet18_cifar", bottleneck="mlp")
