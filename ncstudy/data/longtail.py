"""Long-tailed subsets (CIFAR-10/100-LT): the exponential profile n_c = n_max * r^(c / (K - 1)).

`r` is the imbalance ratio n_min / n_max in (0, 1] (r = 0.01 is the usual "imbalance factor
100"); class 0 keeps n_max images and class K-1 keeps n_max * r. The kept images are a seeded
random subset of each class; the test set stays balanced.
"""

from __future__ import annotations

import numpy as np


def longtail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images kept per class: floor(n_max * ratio^(c / (K - 1))), at least 1."""
    if not 0 < ratio <= 1:
        raise ValueError(
            f"dataset.imbalance_ratio: must be in (0, 1] (n_min / n_max), got {ratio}; "
            "an imbalance factor of 100 is imbalance_ratio: 0.01"
        )
    if num_classes == 1:
        return [n_max]
    return [
        max(1, int(n_max * ratio ** (c / (num_classes - 1)) + 1e-9)) for c in range(num_classes)
    ]


def per_class_subset(labels: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset with `counts[c]` images of class c."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c, n in enumerate(counts):
        idx = np.flatnonzero(labels == c)
        if n > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, fewer than the {n} asked for")
        keep.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(keep)).astype(np.int64)


def longtail_subset(labels: np.ndarray, num_classes: int, ratio: float, seed: int) -> np.ndarray:
    """Indices of the long-tailed subset of a balanced (or any) labelled set; n_max is the size
    of the largest class present."""
    n_max = int(np.bincount(labels, minlength=num_classes).max())
    return per_class_subset(labels, longtail_counts(n_max, num_classes, ratio), seed)
