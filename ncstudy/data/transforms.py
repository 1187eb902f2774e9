"""The paper's augmentations as torchvision transforms (PIL in, normalised float tensor out).

Classifier losses: RandomResizedCrop(scale 0.2-1) + horizontal flip. Supervised contrastive
(two views): the same crop and flip, then ColorJitter(0.4, 0.4, 0.4, 0.1) with p = 0.8,
grayscale with p = 0.2 and, on ImageNet-sized inputs, Gaussian blur with p = 0.5. Metrics and
fixed prototypes use the un-augmented `eval_transform` (ImageNet: resize + centre crop).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision import transforms as T

# The statistics are the registry's (each dataset's facts); here for the transforms' callers.
from ncstudy.data.registry import CIFAR10_STATS, CIFAR100_STATS, IMAGENET_STATS, Stats

__all__ = ["CIFAR10_STATS", "CIFAR100_STATS", "IMAGENET_STATS", "Stats"]
CROP_SCALE = (0.2, 1.0)
BLUR_MIN_SIZE = 64  # blur only on ImageNet-sized inputs (the paper blurs on ImageNet only)


def _finish(stats: Stats) -> list[Any]:
    return [T.ToTensor(), T.Normalize(*stats)]


def classifier_transform(
    size: int, stats: Stats, crop: str = "resized"
) -> Callable[[Any], torch.Tensor]:
    """Training augmentation of the classifier losses: random resized crop and flip, or
    (`crop: padded`) the standard padded crop and flip."""
    if crop == "padded":
        return padded_crop_transform(size, stats)
    return T.Compose(
        [T.RandomResizedCrop(size, scale=CROP_SCALE), T.RandomHorizontalFlip(), *_finish(stats)]
    )


def padded_crop_transform(size: int, stats: Stats) -> Callable[[Any], torch.Tensor]:
    """The standard CIFAR augmentation: a random size x size crop of the image zero-padded by
    size // 8 on each side (4 px at 32), and a horizontal flip."""
    crop = T.RandomCrop(size, padding=size // 8)
    return T.Compose([T.Resize(size), crop, T.RandomHorizontalFlip(), *_finish(stats)])


def contrastive_transform(
    size: int, stats: Stats, blur: bool | None = None
) -> Callable[[Any], torch.Tensor]:
    """One SCL view: crop, flip, colour jitter (p 0.8), grayscale (p 0.2), blur on ImageNet."""
    return T.Compose([*contrastive_ops(size, blur), *_finish(stats)])


def contrastive_ops(size: int, blur: bool | None = None) -> list[Any]:
    """The SCL view operations without tensor conversion: crop and flip, then `colour_ops`."""
    crop_flip = [T.RandomResizedCrop(size, scale=CROP_SCALE), T.RandomHorizontalFlip()]
    return crop_flip + colour_ops(size, blur)


def colour_ops(size: int, blur: bool | None = None) -> list[Any]:
    """The colour part of an SCL view: jitter (p 0.8), grayscale (p 0.2), blur (p 0.5, on
    ImageNet-sized inputs). They accept PIL images and uint8 (C, H, W) tensors alike (the FFCV
    path crops and flips at decode time and applies these to the decoded tensors)."""
    kernel = scl_blur_kernel(size, blur)
    ops: list[Any] = [
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ]
    if kernel is not None:
        ops.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    return ops


def scl_blur_kernel(size: int, blur: bool | None = None) -> int | None:
    """The kernel size of the SCL view's blur at input `size`, or None for no blur: by default
    (`blur` None) only on ImageNet-sized inputs (size >= BLUR_MIN_SIZE); `blur` forces it."""
    if blur is None:
        blur = size >= BLUR_MIN_SIZE
    return blur_kernel(size) if blur else None


def blur_kernel(size: int) -> int:
    """The SCL blur's kernel size: about 10% of the side, odd (SimCLR's recipe)."""
    return 2 * (size // 20) + 1


def eval_transform(size: int, stats: Stats, resize: int | None = None) -> Callable:
    """Un-augmented preprocessing: optional resize of the short side + centre crop, normalise."""
    ops: list[Any] = []
    if resize is not None:
        ops += [T.Resize(resize), T.CenterCrop(size)]
    return T.Compose([*ops, *_finish(stats)])


def normalize_batch(x: torch.Tensor, stats: Stats) -> torch.Tensor:
    """(N, 3, H, W) uint8 or 0-255 float -> normalised float32, as `eval_transform` does."""
    mean = torch.tensor(stats[0], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(stats[1], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() / 255.0 - mean) / std
