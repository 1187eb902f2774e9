"""A view of a dataset at some of its indices with other labels: how the class subset and the
random labels change a split without copying or re-decoding its images."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset


def dataset_labels(dataset: Any) -> np.ndarray:
    """The integer labels of a split, read without loading its images."""
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return np.asarray(labels, dtype=np.int64)
    raise TypeError(f"{type(dataset).__name__}: no `targets` or `labels` to relabel")


class LabelView(Dataset):
    """Item i is (the image of dataset[indices[i]], labels[i]); `targets` are the new labels."""

    def __init__(self, dataset: Any, indices: np.ndarray, labels: np.ndarray):
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices but {len(labels)} labels")
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.targets = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.dataset[int(self.indices[i])][0], int(self.targets[i])
