"""`dataset.classes`: train and test on a subset of a dataset's classes, relabelled 0..k-1 in
the order given (e.g. the four CIFAR-10 classes {automobile, cat, dog, truck} of Jiang et al.,
Figure 4). Applied to every split of any in-memory or file dataset after it is built, so it
composes with `subset_per_class`, `test_per_class` and the long-tailed profiles."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ncstudy.data.bundle import DataBundle
from ncstudy.data.registry import DATASETS

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Datasets whose classes can be named (the others take indices); names as torchvision lists them.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_CLASSES,
    "cifar10_lt": CIFAR10_CLASSES,
    "cifar10_jpeg": CIFAR10_CLASSES,  # its class folders are these names
    "cifar10_jpeg_lt": CIFAR10_CLASSES,
    "digits": tuple(str(i) for i in range(10)),
}


def folder_named(spec: Any) -> bool:
    """Whether the dataset's classes are its folder names, known once it is built (imagefolder)."""
    return callable(DATASETS[spec.name].num_classes)


def class_indices(spec: Any, names: tuple[str, ...] | None = None) -> list[int]:
    """The dataset's own indices of `spec.classes` (names resolved), in the order given;
    `names`: the built dataset's class names where they are only known then."""
    names = CLASS_NAMES.get(spec.name, names)
    out = []
    for c in spec.classes:
        if isinstance(c, int):
            out.append(c)
        elif names is not None and c in names:
            out.append(names.index(c))
        else:
            valid = f"one of {', '.join(names)}" if names else "class indices (integers)"
            raise ValueError(f"classes: unknown class {c!r} of {spec.name}; use {valid}")
    return out


def check_classes(spec: Any) -> None:
    """Validate `spec.classes` (a DatasetSpec's) before anything is loaded."""
    if len(spec.classes) < 2:
        raise ValueError(f"classes: give at least two classes, got {spec.classes}")
    if len(set(spec.classes)) != len(spec.classes):
        raise ValueError(f"classes: repeated classes in {spec.classes}")
    negative = [c for c in spec.classes if isinstance(c, int) and c < 0]
    if negative:
        raise ValueError(f"classes: class indices start at 0, got {negative}")
    if folder_named(spec):  # names are resolved against the class folders when it is built
        return
    indices = class_indices(spec)
    if len(set(indices)) != len(indices):
        raise ValueError(f"classes: repeated classes in {spec.classes}")
    total = DATASETS[spec.name].num_classes
    if not callable(total) and not all(0 <= i < total for i in indices):
        raise ValueError(f"classes: {spec.name} has classes 0..{total - 1}, got {spec.classes}")
    if spec.loader == "ffcv":
        raise ValueError("classes: the ffcv loader reads whole .beton files; use torchvision")


def split_labels(dataset: Dataset) -> np.ndarray:
    """The integer labels of a built split, without loading its images."""
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            return np.asarray(labels.numpy() if torch.is_tensor(labels) else labels)
    raise TypeError(f"dataset.classes: {type(dataset).__name__} exposes no labels to select on")


class ClassSubset(Dataset):
    """The samples of `dataset` whose label is in `keep`, labelled by its position in `keep`."""

    def __init__(self, dataset: Dataset, keep: list[int]):
        labels = split_labels(dataset)
        self.dataset = dataset
        self.indices = np.flatnonzero(np.isin(labels, keep))
        remap = {c: i for i, c in enumerate(keep)}
        self.targets = np.asarray([remap[int(c)] for c in labels[self.indices]], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, _ = self.dataset[int(self.indices[i])]
        return x, int(self.targets[i])


def select_classes(bundle: DataBundle, spec: Any) -> DataBundle:
    """The bundle restricted to `spec.classes` (unchanged when it is None)."""
    if spec.classes is None:
        return bundle
    source = getattr(bundle.train_eval, "source", None)  # an ImageFolder's class folders
    keep = class_indices(spec, tuple(getattr(source, "classes", None) or ()) or None)
    train = ClassSubset(bundle.train, keep)
    contrastive = bundle.train_contrastive
    return replace(
        bundle,
        train=train,
        train_eval=ClassSubset(bundle.train_eval, keep),
        val=ClassSubset(bundle.val, keep),
        test=ClassSubset(bundle.test, keep),
        num_classes=len(keep),
        class_counts=tuple(int(n) for n in np.bincount(train.targets, minlength=len(keep))),
        train_contrastive=None if contrastive is None else ClassSubset(contrastive, keep),
    )
