"""Datasets by name: each entry builds deterministic train/val/test splits as in-memory tensors
or torch datasets, plus the metadata the trainer needs (classes, input shape). Importing the
package loads only the registry (names and facts, standard library): validating a study needs
no torch; `build_data` loads the builders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ncstudy.data.registry import list_datasets

if TYPE_CHECKING:
    from ncstudy.data.bundle import DataBundle

__all__ = ["build_data", "list_datasets"]


def build_data(spec: Any, seed: int) -> DataBundle:
    """Build the dataset named by `spec.name` (a DatasetSpec) with splits drawn from `seed`."""
    # Function-local: the builders import torch, torchvision and PIL (seconds), which validating
    # a study (dataset names and class counts, from the registry) does not need.
    from ncstudy.data.builders import build_data as build

    return build(spec, seed)
