"""A class subset of any dataset (`dataset.classes: [indices or names]`): every split keeps the
samples of those classes, relabelled 0..k-1 in the order given (so `[cat, dog]` makes cat 0).
Names are the dataset's class names (CIFAR's `airplane`..., an ImageFolder's folder names; the
digits' are "0".."9")."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ncstudy.data.bundle import DataBundle
from ncstudy.data.label_view import LabelView, dataset_labels


def class_names(bundle: DataBundle) -> list[str]:
    """The dataset's class names, in label order (the indices as text where it has none)."""
    source = getattr(bundle.train_eval, "source", None)
    names = getattr(source, "classes", None)
    return list(names) if names is not None else [str(c) for c in range(bundle.num_classes)]


def class_indices(classes: list[int | str], names: list[str]) -> list[int]:
    """The label of each requested class; a clear error for an unknown name or index."""
    out = []
    for c in classes:
        if isinstance(c, int):
            if not 0 <= c < len(names):
                raise ValueError(f"dataset.classes: index {c} is out of range 0..{len(names) - 1}")
            out.append(c)
        elif c in names:
            out.append(names.index(c))
        else:
            raise ValueError(f"dataset.classes: unknown class {c!r}; valid: {', '.join(names)}")
    if len(set(out)) != len(out):
        raise ValueError(f"dataset.classes: {classes} names the same class twice")
    return out


def subset(dataset: Any, chosen: list[int]) -> Any:
    """The samples of the chosen classes, relabelled by their position in `chosen`."""
    if dataset is None:
        return None
    labels = dataset_labels(dataset)
    mapping = np.full(max(int(labels.max(initial=0)), *chosen) + 1, -1, dtype=np.int64)
    mapping[chosen] = np.arange(len(chosen))
    keep = np.flatnonzero(mapping[labels] >= 0)
    return LabelView(dataset, keep, mapping[labels[keep]])


def with_class_subset(bundle: DataBundle, spec: Any) -> DataBundle:
    """The bundle restricted to `spec.classes` (unchanged when it is None)."""
    if spec.classes is None:
        return bundle
    chosen = class_indices(list(spec.classes), class_names(bundle))
    train_eval = subset(bundle.train_eval, chosen)
    counts = np.bincount(train_eval.targets, minlength=len(chosen))
    return dataclasses.replace(
        bundle,
        train=subset(bundle.train, chosen),
        train_eval=train_eval,
        val=subset(bundle.val, chosen),
        test=subset(bundle.test, chosen),
        train_contrastive=subset(bundle.train_contrastive, chosen),
        num_classes=len(chosen),
        class_counts=tuple(int(n) for n in counts),
    )
