"""The size of a dataset's training split without loading it, for the pre-flight: the
official per-class counts (fixed for CIFAR and digits, counted file names for ImageFolder trees
and the CIFAR-10 JPEG zip) put through the same split functions the loaders use
(`split_official`, `stratified_split`), which depend only on the labels, so the size is exact.
The loader modules (torch, torchvision) are imported inside the functions, so importing the
pre-flight (ncstudy/data/preflight.py) stays light."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

# images per class of the official training sets
CIFAR_TRAIN_PER_CLASS = {"cifar10": (10, 5000), "cifar100": (100, 500)}
# scikit-learn's digits (fixed data; importing scikit-learn to count them costs seconds)
DIGITS_PER_CLASS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def train_split_size(spec: Any) -> int | None:
    """Images in the training split of `spec` (after subset, long tail and val hold-out), or
    None when the data cannot be counted here. Raises ValueError naming the field when the
    split itself is impossible (e.g. subset_per_class above the smallest class)."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.digits import digits_splits
    from ncstudy.data.images import split_official

    if spec.name == "digits":
        labels = np.repeat(np.arange(10, dtype=np.int64), DIGITS_PER_CLASS)
        train, _, _ = digits_splits(labels, spec)
        return _in_classes(spec, labels[train])
    counts = _train_class_counts(spec)
    if counts is None:
        return None
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    # the test part is discarded: the training labels stand in for it (test_per_class applies)
    train, _, _ = split_official(labels, labels, len(counts), spec)
    return _in_classes(spec, labels[train])


def _in_classes(spec: Any, train_labels: np.ndarray) -> int:
    """How many training labels `dataset.classes` keeps (all without it): the subset is taken
    after the split (ncstudy/data/class_subset.py), so it is counted the same way here."""
    if not getattr(spec, "classes", None):
        return len(train_labels)
    # torch (class_subset's datasets): see the module docstring
    from ncstudy.data.class_subset import class_indices, folder_named

    names = None
    if folder_named(spec) and spec.root is not None:  # imagefolder: its sorted class folders
        train_dir = Path(spec.root).expanduser() / "train"
        names = tuple(sorted(e.name for e in os.scandir(train_dir) if e.is_dir()))
    return int(np.isin(train_labels, class_indices(spec, names)).sum())


def _train_class_counts(spec: Any) -> list[int] | None:
    """Images per class of the official training set, in class order."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGENET_CLASSES, cifar10_jpeg_cache, shared_cifar10_zip

    base = spec.name.removesuffix("_lt")
    if base in CIFAR_TRAIN_PER_CLASS:
        k, n = CIFAR_TRAIN_PER_CLASS[base]
        return [n] * k
    if base == "cifar10_jpeg":
        tree = Path(spec.root).expanduser() if spec.root is not None else cifar10_jpeg_cache()
        if tree.is_dir():
            return _tree_counts(tree / "train")
        zipped = shared_cifar10_zip()
        return _zip_counts(zipped) if zipped is not None and zipped.is_file() else None
    if spec.name in ("imagefolder", *IMAGENET_CLASSES) and spec.root is not None:
        return _tree_counts(Path(spec.root).expanduser() / "train")
    return None


def _tree_counts(split_dir: Path) -> list[int] | None:
    """Image files per class folder of `split_dir` (sorted classes, as ImageFolder)."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGE_SUFFIXES

    if not split_dir.is_dir():
        return None
    with os.scandir(split_dir) as entries:
        classes = sorted(e.name for e in entries if e.is_dir())
    counts = []
    for name in classes:
        with os.scandir(split_dir / name) as files:
            counts.append(sum(f.name.lower().endswith(IMAGE_SUFFIXES) for f in files))
    return counts


def _zip_counts(zip_path: Path) -> list[int]:
    """Image files per class of the zip's train split (`<top>/train/<class>/<file>`)."""
    # torch, torchvision: see the module docstring
    from ncstudy.data.imagefolder import IMAGE_SUFFIXES

    per_class: dict[str, int] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if (
                len(parts) == 4
                and parts[1] == "train"
                and parts[3].lower().endswith(IMAGE_SUFFIXES)
            ):
                per_class[parts[2]] = per_class.get(parts[2], 0) + 1
    return [per_class[c] for c in sorted(per_class)]
