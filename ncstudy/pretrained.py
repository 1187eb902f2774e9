"""`model.init_from: torchvision:<WeightsEnum>` (e.g. `torchvision:ResNet50_Weights.IMAGENET1K_V2`):
a torchvision pretrained ResNet as the encoder's start. The weights come through torchvision's
weights API (`get_weight(...).get_state_dict()`: downloaded once into $TORCH_HOME/hub/checkpoints,
read from there afterwards) and are renamed to ncstudy's ResNet (ncstudy/models/resnet.py); the
classifier `fc` is left out. They fit resnet18/34/50/101/152 (the ImageNet stem) with width 64
and no feature bottleneck, the network torchvision trained."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ncstudy.models.resnet import ResNet

PREFIX = "torchvision:"
STEM = {"conv1": 0, "bn1": 1}  # torchvision's stem -> ncstudy's body index
LAYER = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
BLOCK = re.compile(r"^(conv|bn)([1-3])\.(.+)$")


def torchvision_weights(name: str) -> Any:
    """The torchvision weights enum member `name` (e.g. ResNet50_Weights.IMAGENET1K_V2)."""
    from torchvision.models import get_weight  # torchvision's model zoo: only when asked for

    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(
            f"model.init_from: {PREFIX}{name} names no torchvision weights ({err}); give "
            f"{PREFIX}<Enum>.<member>, e.g. {PREFIX}ResNet50_Weights.IMAGENET1K_V2 for model "
            f"resnet50 or {PREFIX}ResNet18_Weights.IMAGENET1K_V1 for resnet18"
        ) from None


def block_counts(state: dict[str, torch.Tensor]) -> list[int]:
    """The number of blocks of torchvision's layer1..layer4 in a state_dict."""
    counts = [0, 0, 0, 0]
    for key in state:
        m = LAYER.match(key)
        if m:
            counts[int(m[1]) - 1] = max(counts[int(m[1]) - 1], int(m[2]) + 1)
    return counts


def ncstudy_key(key: str, offsets: list[int]) -> str | None:
    """ncstudy's name of one torchvision ResNet key (None: the classifier `fc`, not taken)."""
    head, _, rest = key.partition(".")
    if head in STEM:
        return f"body.{STEM[head]}.{rest}"
    m = LAYER.match(key)
    if m is None:
        return None if head == "fc" else key
    index = offsets[int(m[1]) - 1] + int(m[2])
    inner = m[3]
    if inner.startswith("downsample."):
        return f"body.{index}.shortcut.{inner.removeprefix('downsample.')}"
    b = BLOCK.match(inner)
    if b is None:
        return key
    position = 3 * (int(b[2]) - 1) + (b[1] == "bn")  # conv, bn, relu per step of the block
    return f"body.{index}.body.{position}.{b[3]}"


def renamed(state: dict[str, torch.Tensor], stem_modules: int) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state_dict under ncstudy's names (layers after `stem_modules`)."""
    counts = block_counts(state)
    offsets = [stem_modules + sum(counts[:i]) for i in range(4)]
    out = {}
    for key, value in state.items():
        name = ncstudy_key(key, offsets)
        if name is not None:
            out[name] = value
    return out


def check_fit(state: dict[str, torch.Tensor], encoder: nn.Module, init_from: str) -> None:
    """Every encoder tensor has a weight of its shape (BN step counters aside), and no weight
    is left over; else a clear error."""
    own = encoder.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(own[k].shape)} vs {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            f"model.init_from: {init_from} does not fit this encoder (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, other shapes {shapes[:2]}); use the model the weights are "
            "for (ResNet50_Weights: model.name resnet50, ImageNet stem, not resnet50_cifar) with "
            "model.width 64 and feature_dim its pooled width (512 or 2048: no bottleneck)"
        )


def torchvision_encoder_state(init_from: str, encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state_dict from the torchvision weights `init_from` names (downloaded to
    $TORCH_HOME/hub/checkpoints unless already there)."""
    if not isinstance(encoder, ResNet):
        raise ValueError(
            f"model.init_from: {init_from}: torchvision weights fit the ResNet encoders "
            f"(resnet18/34/50/101/152), not {type(encoder).__name__}"
        )
    weights = torchvision_weights(init_from.removeprefix(PREFIX))
    state = weights.get_state_dict(progress=False)
    # the ImageNet stem is conv, bn, relu, max-pool (4 modules); the CIFAR stem has 3
    stem = 4 if isinstance(encoder.body[3], nn.MaxPool2d) else 3
    out = renamed(state, stem)
    check_fit(out, encoder, init_from)
    return out
