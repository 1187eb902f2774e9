"""The checks of random labels (`random_labels`, ncstudy/data/random_labels.py), a dataset
variant a study can ask for on top of any dataset (the class subset's are in
ncstudy/data/class_subset.py). Standard library only: validating a study imports this."""

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
