"""The checks of the dataset variants that a study can ask for on top of any dataset: a class
subset (`classes`, ncstudy/data/class_subset.py) and random labels (`random_labels`,
ncstudy/data/random_labels.py). Standard library only: validating a study imports this."""

from __future__ import annotations

from typing import Any


def check_data_variants(spec: Any) -> None:
    """Refuse variant fields that cannot apply, naming the field and the fix."""
    if not spec.random_labels and spec.label_seed != 0:
        raise ValueError("label_seed applies with random_labels: true only; set it or remove it")
    if spec.random_labels and spec.loader == "ffcv":
        raise ValueError(
            "random_labels: the FFCV .beton files hold the true labels; use loader: torchvision"
        )
    if spec.classes is not None:
        check_classes(spec.classes, spec.loader)


def check_classes(classes: list[int | str], loader: str) -> None:
    """At least two distinct classes, indices non-negative; no FFCV (its files hold all)."""
    if len(classes) < 2:
        raise ValueError(f"classes: a class subset needs at least 2 classes, got {classes}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes: repeated classes in {classes}")
    negative = [c for c in classes if isinstance(c, int) and c < 0]
    if negative:
        raise ValueError(f"classes: class indices start at 0, got {negative}")
    if loader == "ffcv":
        raise ValueError("classes: a class subset needs loader: torchvision (not ffcv)")
