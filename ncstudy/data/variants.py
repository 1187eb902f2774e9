"""The checks of random labels (`random_labels`, ncstudy/data/random_labels.py), a dataset
variant a study can ask for on top of any dataset (the class subset's are in
ncstudy/data/class_subset.py). Standard library only: validating a study imports this."""

from __future__ import annotations

from typing import Any

from ncstudy.data.registry import DATASETS


def check_data_variants(spec: Any) -> None:
    """Refuse variant fields that cannot apply, naming the field and the fix."""
    if spec.normalization == "imagenet" and DATASETS[spec.name].stats is None:
        raise ValueError(
            f"normalization: imagenet applies to RGB image datasets; {spec.name} has no RGB "
            "images: remove it"
        )
    if not spec.random_labels and spec.label_seed != 0:
        raise ValueError("label_seed applies with random_labels: true only; set it or remove it")
    if spec.random_labels and spec.loader == "ffcv":
        raise ValueError(
            "random_labels: the FFCV .beton files hold the true labels; use loader: torchvision"
        )
