"""ResNets as feature encoders: the CIFAR variant (3x3 stride-1 stem, no max-pool) and the
ImageNet variant (7x7 stride-2 stem + max-pool), ResNet-18/34 (basic blocks) and 50/101/152
(bottlenecks). The encoder ends at global average pooling; when `model.feature_dim` differs
from the pooled width (512 x width/64, or 4x that for bottlenecks) a linear bottleneck + BN maps
to it (for K > d studies; `model.bottleneck` names the kind: linear_bn or the paper's linear
with bias, ncstudy/models/bottleneck.py). `model.width` is the first stage's channels.
Defaults: width 64 (the standard ResNets) and feature_dim = the pooled width (no bottleneck):
512 or 2048.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ncstudy.models.bottleneck import make_bottleneck
from ncstudy.models.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (the first `inner` wide, default planes)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, inner: int | None = None):
        super().__init__()
        inner = inner or planes  # a wide block widens its first convolution (wide_resnet.py)
        self.body = nn.Sequential(
            nn.Conv2d(cin, inner, 3, stride, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut = _shortcut(cin, planes * self.expansion, stride)
        self.out_channels = planes * self.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce to `inner` (default planes), 3x3 (carrying the stride, as torchvision's v1.5),
    1x1 expand to 4 x planes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, inner: int | None = None):
        super().__init__()
        inner = inner or planes  # a wide block widens its two first convolutions
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, stride, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out, 1, bias=False),
            nn.BatchNorm2d(out),
        )
        self.shortcut = _shortcut(cin, out, stride)
        self.out_channels = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """A ResNet encoder: stem, four stages, global average pooling, optional bottleneck."""

    def __init__(
        self,
        depth: int,
        cifar_stem: bool,
        in_channels: int,
        width: int,
        feature_dim: int,
        bottleneck: str = "linear_bn",
    ):
        super().__init__()
        block, blocks = DEPTHS[depth]
        if cifar_stem:
            stem: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)]
        stem += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if not cifar_stem:
            stem.append(nn.MaxPool2d(3, 2, 1))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            for j in range(n):
                layers.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
        self.body = nn.Sequential(*stem, *layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pooled_dim = cin
        self.feature_dim = feature_dim
        # No ReLU after the bottleneck: normalised losses need features of both signs.
        self.bottleneck: nn.Module = (
            nn.Identity() if feature_dim == cin else make_bottleneck(bottleneck, cin, feature_dim)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.pool(self.body(x)).flatten(1))


def _register(depth: int, cifar: bool) -> None:
    name = f"resnet{depth}" + ("_cifar" if cifar else "")

    def build(spec: Any, input_shape: tuple[int, ...]) -> nn.Module:
        # width and feature_dim: ModelSpec's validator filled in this model's defaults
        model: nn.Module = ResNet(
            depth, cifar, input_shape[0], spec.width, spec.feature_dim, spec.bottleneck
        )
        if spec.sync_bn:  # effective under DDP on CUDA; plain BN on one process
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    build.__doc__ = f"{name}: ResNet-{depth}, {'CIFAR' if cifar else 'ImageNet'} stem."
    expansion = DEPTHS[depth][0].expansion  # type: ignore[attr-defined]
    register_model(name, width=64, feature_dim=lambda width: 8 * width * expansion)(build)


for _depth in DEPTHS:
    _register(_depth, cifar=True)
    _register(_depth, cifar=False)
