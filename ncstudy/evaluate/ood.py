"""`evaluation.ood`: out-of-distribution accuracy (Kumar et al. 2022; Jiang et al.'s fine-tuning
experiment: trained on CIFAR-10, tested on STL-10). The trial's own network, encoder and loss
head, classifies the OOD test images with the prediction rule of its test accuracy.

Labels are mapped to the training classes by class name: the dataset's `classes` mapping first,
else the same name, else ALIASES (STL-10's `car` is CIFAR-10's `automobile`). Images of a class
with no training class (STL-10's `monkey`) are dropped and counted; the network still predicts
over all its training classes, so a prediction of a class the OOD set lacks (CIFAR-10's `frog`)
counts as an error. The images are resized
(short side) and centre-cropped to the trial's input size and normalised with the training
dataset's statistics. Each rank scores its shard `rank::world_size`; counts are summed over
ranks, so the accuracy does not depend on the number of workers.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms as T

from ncstudy.data.class_subset import CLASS_NAMES, class_indices
from ncstudy.data.registry import dataset_facts, input_stats
from ncstudy.data.stl10 import CLASSES as STL10_CLASSES
from ncstudy.data.stl10 import STL10Split, load_stl10, stl10_root
from ncstudy.evaluate.corruptions import evenly_spaced
from ncstudy.evaluate.passes import accuracy, shard_loader
from ncstudy.losses.distributed import distributed_world

log = logging.getLogger(__name__)

# OOD class name -> the training class of the same meaning under another name.
ALIASES: dict[str, str] = {
    "car": "automobile",  # STL-10 -> CIFAR-10
    "automobile": "car",
    "plane": "airplane",
    "aeroplane": "airplane",
}


def class_map(
    ood_classes: list[str], train_classes: list[str], overrides: dict[str, str | None], field: str
) -> list[int | None]:
    """For each OOD class, the index of its training class (None: dropped); `overrides` (the
    YAML mapping) first, then the same name, then ALIASES."""
    unknown = [c for c in overrides if c not in ood_classes]
    if unknown:
        raise ValueError(
            f"{field}.classes: {unknown} are not classes of it; its classes: {ood_classes}"
        )
    out: list[int | None] = []
    for name in ood_classes:
        if name in overrides:
            target = overrides[name]
            if target is not None and target not in train_classes:
                raise ValueError(
                    f"{field}.classes: {name} -> {target!r}, which is no training class; "
                    f"the training classes: {train_classes} (or null to drop {name})"
                )
        else:
            target = name if name in train_classes else ALIASES.get(name)
        out.append(train_classes.index(target) if target in train_classes else None)
    if all(t is None for t in out):
        raise ValueError(
            f"{field}: none of its classes {ood_classes} is a training class {train_classes}; "
            f"map them in {field}.classes (its class -> a training class)"
        )
    return out


def training_class_names(trial: Any, test_set: Any) -> list[str]:
    """The training classes' names in label order (after a `dataset.classes` subset)."""
    spec, base = trial.dataset, test_set
    while getattr(base, "source", None) is None and hasattr(base, "dataset"):
        base = base.dataset  # under a ClassSubset or Subset
    names = getattr(getattr(base, "source", None), "classes", None) or CLASS_NAMES.get(spec.name)
    if names is None:
        raise ValueError(
            f"evaluation.ood: the classes of {spec.name} have no names to map the OOD classes "
            "to; train on a dataset with named classes (cifar10, cifar10_jpeg, imagefolder)"
        )
    names = [str(n) for n in names]
    if spec.classes:
        return [names[i] for i in class_indices(spec, tuple(names))]
    return names


class MappedOOD(Dataset):
    """The images of an OOD split whose class maps to a training class, relabelled to it."""

    def __init__(self, base: Any, indices: np.ndarray, mapping: list[int | None], transform: Any):
        labels = np.asarray(base.targets)[indices]
        kept = np.asarray([mapping[int(c)] is not None for c in labels], dtype=bool)
        self.base, self.indices, self.transform = base, indices[kept], transform
        self.targets = np.asarray([mapping[int(c)] for c in labels[kept]], dtype=np.int64)
        self.dropped = int((~kept).sum())

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.base.load(int(self.indices[i])).convert("RGB")
        return self.transform(image), int(self.targets[i])


def ood_dataset(
    spec: Any, index: int, train_classes: list[str], image_size: int, stats: Any
) -> MappedOOD:
    """The mapped, resized and normalised images of `evaluation.ood[index]`."""
    field = f"evaluation.ood[{index}]"
    base = load_stl10(spec.root, spec.split, spec.download, field=f"{field}.root")
    mapping = class_map(list(base.classes), train_classes, spec.classes, field)
    transform = T.Compose(
        [T.Resize(image_size), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(*stats)]
    )
    return MappedOOD(base, evenly_spaced(len(base), spec.max_test), mapping, transform)


def ood_accuracies(
    encoder: nn.Module,
    criterion: Any,
    device: torch.device,
    specs: list[Any],
    *,
    train_classes: list[str],
    image_size: int,
    stats: Any,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 256,
) -> dict[str, float]:
    """`ood/<key>/acc1` (the loss's prediction rule), `ood/<key>/n_images` (scored) and
    `ood/<key>/n_dropped` (no training class) per OOD set."""
    out: dict[str, float] = {}
    for i, spec in enumerate(specs):
        data = ood_dataset(spec, i, train_classes, image_size, stats)
        loader = shard_loader(data, rank, world_size, batch_size)
        out[f"ood/{spec.key}/acc1"] = accuracy(encoder, criterion, loader, device)
        out[f"ood/{spec.key}/n_images"] = float(len(data))
        out[f"ood/{spec.key}/n_dropped"] = float(data.dropped)
        log.info("ood/%s: %d images scored, %d dropped", spec.key, len(data), data.dropped)
    return out


def trial_ood(
    encoder: nn.Module, criterion: Any, trial: Any, test_set: Any, device: torch.device
) -> dict[str, float]:
    """`ood_accuracies` of a trial at the end of training: its training classes, its input
    size (of the test set's images) and its dataset's statistics, over all ranks."""
    stats = input_stats(trial.dataset)
    if stats is None:
        raise ValueError(
            f"evaluation.ood: {trial.dataset.name} has no RGB image statistics to normalise the "
            "OOD images with; train on an RGB image dataset (cifar10, cifar10_jpeg, ...)"
        )
    rank, world = distributed_world()
    return ood_accuracies(
        encoder,
        criterion,
        device,
        trial.evaluation.ood,
        train_classes=training_class_names(trial, test_set),
        image_size=int(test_set[0][0].shape[-1]),
        stats=stats,
        rank=rank,
        world_size=world,
        batch_size=trial.evaluation.eval_batch_size,
    )


def check_ood(specs: list[Any], datasets: list[Any]) -> None:
    """Before training (ncstudy/data/preflight.py): each OOD set's files are there (unless it
    downloads) and its classes map to the training classes of every dataset whose class names
    are known without loading it; ValueError / FileNotFoundError naming the field otherwise."""
    for i, spec in enumerate(specs):
        field = f"evaluation.ood[{i}]"
        for d in datasets:
            if dataset_facts(d.name).stats is None:
                raise ValueError(
                    f"{field}: {d.name} is not an RGB image dataset, its encoder cannot read "
                    "STL-10 images; train on cifar10, cifar10_jpeg, ... or remove evaluation.ood"
                )
            names = CLASS_NAMES.get(d.name)
            if names is not None:
                chosen = [names[k] for k in class_indices(d, names)] if d.classes else names
                class_map(list(STL10_CLASSES), list(chosen), spec.classes, field)
        if not spec.download:
            STL10Split(stl10_root(spec.root), spec.split, field=f"{field}.root")
