"""The dataset registry: every dataset name the study YAML accepts, with its facts (class count,
normalisation statistics, whether its classes are ImageNet-1K's), known without loading data.

Standard library only (dataset names and class counts cost no torch import), and it imports no
builder: the builders (ncstudy.data.builders) read their facts from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

# Per-channel (mean, std) that a dataset's RGB images are normalised with.
CIFAR10_STATS: Stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class DatasetFacts:
    """What the package knows of a dataset before loading it."""

    # The class count, or a function of the DatasetSpec (imagefolder: its class folders).
    num_classes: int | Callable[[Any], int]
    # The (mean, std) its RGB images are normalised with, also the statistics of the
    # downstream evaluations' inputs; None: not RGB images (digits: standardised 1-channel).
    stats: Stats | None
    # Its classes are ImageNet-1K's: corruption mCE can be normalised by AlexNet's errors.
    imagenet_1k: bool = False


def _folder_classes(spec: Any) -> int:
    """The class count of an ImageFolder tree: the folders under `root/train`."""
    if spec.root is None:
        raise ValueError("dataset.root: the imagefolder dataset needs root (train/<class>/*)")
    train = Path(spec.root).expanduser() / "train"
    if not train.is_dir():
        raise ValueError(f"dataset.root: {train} does not exist (ImageFolder layout)")
    return sum(1 for d in train.iterdir() if d.is_dir())


DATASETS: dict[str, DatasetFacts] = {
    "digits": DatasetFacts(10, None),
    "cifar10": DatasetFacts(10, CIFAR10_STATS),
    "cifar100": DatasetFacts(100, CIFAR100_STATS),
    "cifar10_lt": DatasetFacts(10, CIFAR10_STATS),
    "cifar100_lt": DatasetFacts(100, CIFAR100_STATS),
    "imagefolder": DatasetFacts(_folder_classes, IMAGENET_STATS),
    "imagenet": DatasetFacts(1000, IMAGENET_STATS, imagenet_1k=True),
    "imagenet100": DatasetFacts(100, IMAGENET_STATS),
    "miniimagenet": DatasetFacts(100, IMAGENET_STATS),  # ncstudy/data/miniimagenet.py
    "cifar10_jpeg": DatasetFacts(10, CIFAR10_STATS),
    "cifar10_jpeg_lt": DatasetFacts(10, CIFAR10_STATS),
}


def input_stats(spec: Any) -> Stats | None:
    """The (mean, std) the images of a DatasetSpec are normalised with: its dataset's, or
    ImageNet's with `normalization: imagenet` (None: not RGB images)."""
    stats = dataset_facts(spec.name).stats
    if stats is not None and getattr(spec, "normalization", "dataset") == "imagenet":
        return IMAGENET_STATS
    return stats


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(DATASETS)


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of dataset `name`; a clear error naming the valid names for an unknown one."""
    if name not in DATASETS:
        raise ValueError(f"dataset.name: unknown dataset {name!r}; valid: {list_datasets()}")
    return DATASETS[name]


def dataset_num_classes(spec: Any) -> int:
    """The number of classes of the dataset a DatasetSpec names, without loading it."""
    if getattr(spec, "classes", None):  # a class subset (ncstudy/data/class_subset.py)
        return len(spec.classes)
    num_classes = DATASETS[spec.name].num_classes
    return num_classes(spec) if callable(num_classes) else num_classes
