"""Wide ResNets as in "Are All Losses Created Equal" (Zhou et al. 2022): the ResNet's inner
channels are widened, its stage outputs are not, so the feature dimension d is fixed by the
architecture (2048 for WideResNet50, 512 for WideResNet18) whatever the width.

`model.width` is the inner width of the first stage (stage i has width * 2**i): 64 is the plain
ResNet, 128 torchvision's wide_resnet50_2 (the paper's WideResNet50-2, the default); the paper's
multipliers X = 0.25, 0.5, 1, 2 are widths 16, 32, 64, 128. In a bottleneck the inner width is
that of its two first convolutions (its 1x1 expansion is fixed at 4 x 64 * 2**i); in a basic
block it is that of its first 3x3 convolution (its second maps back to 64 * 2**i).

`wide_resnet50_cifar` has the CIFAR stem (3x3, stride 1, no max-pool; the paper's CIFAR
network), `wide_resnet50` and `wide_resnet18` the ImageNet stem (7x7 stride 2 + max-pool;
the paper trains WideResNet18 on miniImageNet). A `model.feature_dim` other than d adds
ResNet's linear bottleneck + BN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ncstudy.models.registry import register_model
from ncstudy.models.resnet import BasicBlock, Bottleneck

STAGE_PLANES = (64, 128, 256, 512)  # each stage's output planes (x4 for bottlenecks): fixed
BLOCKS = {50: (3, 4, 6, 3), 18: (2, 2, 2, 2)}
STANDARD_WIDTH = 128  # the "-2" networks: twice the plain ResNet's inner width


# Wide blocks: ResNet's with a wider inner width, (cin, planes, stride, inner)
WideBottleneck, WideBasicBlock = Bottleneck, BasicBlock


def _stem(cifar: bool, in_channels: int) -> list[nn.Module]:
    """CIFAR: 3x3 stride 1; ImageNet: 7x7 stride 2 + 3x3 max-pool; both to 64 channels."""
    if cifar:
        return [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True)]
    conv = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return [conv, nn.BatchNorm2d(64), nn.ReLU(True), nn.MaxPool2d(3, 2, 1)]


class WideResNet(nn.Module):
    """Stem, four stages of widened blocks, global average pooling, optional bottleneck."""

    def __init__(
        self, depth: int, cifar_stem: bool, in_channels: int, width: int, feature_dim: int
    ):
        super().__init__()
        block = WideBottleneck if depth == 50 else WideBasicBlock
        layers: list[nn.Module] = []
        cin = 64
        for i, (planes, n) in enumerate(zip(STAGE_PLANES, BLOCKS[depth], strict=True)):
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                layers.append(block(cin, planes, stride, inner=width * 2**i))
                cin = layers[-1].out_channels
        self.body = nn.Sequential(*_stem(cifar_stem, in_channels), *layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pooled_dim = cin
        self.feature_dim = feature_dim
        self.bottleneck: nn.Module = (
            nn.Identity()
            if feature_dim == cin
            else nn.Sequential(nn.Linear(cin, feature_dim, bias=False), nn.BatchNorm1d(feature_dim))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.pool(self.body(x)).flatten(1))


def _register(name: str, depth: int, cifar: bool) -> None:
    pooled = STAGE_PLANES[-1] * (4 if depth == 50 else 1)

    def build(spec: Any, input_shape: tuple[int, ...]) -> nn.Module:
        # width and feature_dim: ModelSpec's validator filled in this model's defaults
        model: nn.Module = WideResNet(depth, cifar, input_shape[0], spec.width, spec.feature_dim)
        if spec.sync_bn:  # effective under DDP on CUDA; plain BN on one process
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    stem = "CIFAR" if cifar else "ImageNet"
    build.__doc__ = f"{name}: WideResNet-{depth} ({stem} stem), d = {pooled} at any width."
    register_model(name, width=STANDARD_WIDTH, feature_dim=lambda width: pooled)(build)


_register("wide_resnet50_cifar", 50, cifar=True)
_register("wide_resnet50", 50, cifar=False)
_register("wide_resnet18", 18, cifar=False)
