"""A small CNN encoder for CPU-sized studies (digits, subsets of CIFAR)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ncstudy.models.bottleneck import make_bottleneck
from ncstudy.models.registry import register_model


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (the last two halve the resolution), global average pooling,
    and a linear layer to `feature_dim` followed by BN (`bottleneck="linear"`: a linear layer
    with bias, no BN). No final ReLU: non-negative features
    could not form a simplex ETF on the sphere, which the normalised losses aim for."""

    def __init__(
        self, in_channels: int, width: int, feature_dim: int, bottleneck: str = "linear_bn"
    ):
        super().__init__()
        self.feature_dim = feature_dim

        def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.body = nn.Sequential(
            stage(in_channels, width, 1), stage(width, 2 * width, 2), stage(2 * width, 4 * width, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = make_bottleneck(bottleneck, 4 * width, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


@register_model("small_cnn", width=32, feature_dim=lambda width: 64)
def build_small_cnn(spec: Any, input_shape: tuple[int, ...]) -> nn.Module:
    """SmallCNN with `model.width` channels in the first stage and `model.feature_dim` outputs
    (defaults 32 and 64: its linear layer always maps the pooled 4 x width to feature_dim;
    ModelSpec's validator fills them in)."""
    return SmallCNN(input_shape[0], spec.width, spec.feature_dim, spec.bottleneck)
