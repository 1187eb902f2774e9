"""Datasets by name: each entry builds deterministic train/val/test splits as in-memory tensors
or torch datasets, plus the metadata the trainer needs (classes, input shape)."""

from __future__ import annotations

from typing import Any

from ncstudy.data.bundle import DataBundle
from ncstudy.data.registry import list_datasets

__all__ = ["DataBundle", "build_data", "list_datasets"]


def build_data(spec: Any, seed: int) -> DataBundle:
    """Build the dataset named by `spec.name` (a DatasetSpec) with splits drawn from `seed`."""
    # Function-local: the builders import torchvision and PIL (about 1 s), which validating a
    # study (dataset names and class counts, from the registry) does not need.
    from ncstudy.data.builders import build_data as build

    return build(spec, seed)
