"""Datasets by name: each entry builds deterministic train/val/test splits as in-memory tensors
or torch datasets, plus the metadata the trainer needs (classes, input shape)."""

from ncstudy.data.registry import DataBundle, build_data, list_datasets

__all__ = ["DataBundle", "build_data", "list_datasets"]
