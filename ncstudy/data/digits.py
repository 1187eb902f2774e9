"""The 8x8 handwritten digits that scikit-learn ships (1,797 images, 10 classes): no download.

Upsampled to `image_size` (default 16) with bilinear interpolation, standardised with the
training split's statistics, and split deterministically (stratified, `split_seed`) into
train/val/test. Training augmentation (optional): random translation by up to 1/8 of the side.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ncstudy.data.bundle import DataBundle
from ncstudy.data.longtail import longtail_subset, per_class_subset


class TensorImages(Dataset):
    """Images held in memory as one float tensor; optional random-shift augmentation."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False):
        self.images, self.labels, self.augment = images, labels, augment
        self.max_shift = max(1, images.shape[-1] // 8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:
            image = random_shift(image, self.max_shift)
        return image, self.labels[index]


def random_shift(image: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate a (C, H, W) image by a random integer offset, padding with the border value 0."""
    dx, dy = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    padded = F.pad(image, (max_shift, max_shift, max_shift, max_shift))
    h, w = image.shape[-2:]
    top, left = max_shift + dy, max_shift + dx
    return padded[..., top : top + h, left : left + w]


def stratified_split(
    labels: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test: per class, a seeded permutation cut at the given val/test
    fractions. The same seed always gives the same split."""
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        parts[1].extend(idx[:n_val])
        parts[2].extend(idx[n_val : n_val + n_test])
        parts[0].extend(idx[n_val + n_test :])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def digits_splits(labels: np.ndarray, spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices. Without subset options: one stratified split. With them, as
    for the image datasets: the test part is held out first, the rest is the training pool that
    `subset_per_class` (n per class) and `imbalance_ratio` cut, and val is `val_fraction` of what
    remains; `test_per_class` caps the test part."""
    seed = spec.split_seed
    if spec.subset_per_class is None and spec.imbalance_ratio is None:
        train, val, test = stratified_split(labels, (spec.val_fraction, spec.test_fraction), seed)
    else:
        rest, _, test = stratified_split(labels, (0.0, spec.test_fraction), seed)
        if spec.subset_per_class is not None:
            smallest = int(np.bincount(labels[rest], minlength=10).min())
            if smallest < spec.subset_per_class:
                raise ValueError(
                    f"dataset.subset_per_class: {spec.subset_per_class} is more than the smallest "
                    f"digits class has outside the test part ({smallest}); lower it"
                )
            rest = rest[per_class_subset(labels[rest], [spec.subset_per_class] * 10, seed)]
        if spec.imbalance_ratio is not None:
            if spec.subset_per_class is None:
                raise ValueError(
                    "dataset.imbalance_ratio: the digits classes differ in size (174-183); set "
                    "subset_per_class too, so the long tail starts from equal classes"
                )
            rest = rest[longtail_subset(labels[rest], 10, spec.imbalance_ratio, seed)]
        tr, va, _ = stratified_split(labels[rest], (spec.val_fraction, 0.0), seed)
        train, val = rest[tr], rest[va]
    if spec.test_per_class is not None:
        per_class = [min(spec.test_per_class, int(n)) for n in np.bincount(labels[test])]
        test = test[per_class_subset(labels[test], per_class, seed)]
    return train, val, test


def build_digits(spec: Any, seed: int) -> DataBundle:
    """The scikit-learn digits as a DataBundle (the trial seed does not change the split)."""
    from sklearn.datasets import load_digits  # scikit-learn (about 1 s): this dataset only

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    size = spec.image_size or 16
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, val_idx, test_idx = digits_splits(labels, spec)
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    y = torch.from_numpy(labels)

    def subset(idx: np.ndarray, augment: bool = False) -> TensorImages:
        t = torch.from_numpy(idx)
        return TensorImages(images[t].contiguous(), y[t].contiguous(), augment=augment)

    return DataBundle(
        train=subset(train_idx, augment=spec.augment),
        train_eval=subset(train_idx),
        val=subset(val_idx),
        test=subset(test_idx),
        num_classes=10,
        input_shape=(1, size, size),
        class_counts=tuple(int(n) for n in np.bincount(labels[train_idx], minlength=10)),
    )


# name -> builder (the names and facts: ncstudy.data.registry)
BUILDERS = {"digits": build_digits}
