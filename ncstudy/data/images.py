"""Image datasets shared by CIFAR, the offline CIFAR-10 JPEG copy and ImageFolder trees: a
lazily decoded `ImageDataset` and `make_bundle`, which turns an official train/test pair into
deterministic splits (per-class subset, long-tailed profile, stratified validation hold-out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ncstudy.data import transforms as tf
from ncstudy.data.bundle import DataBundle
from ncstudy.data.digits import stratified_split
from ncstudy.data.ffcv_loader import FFCVTrainLoaderFactory, beton_path
from ncstudy.data.longtail import longtail_subset, per_class_subset


@dataclass(frozen=True)
class ImageSource:
    """One official split: uint8 (N, H, W, 3) pixels or image file paths, with integer labels."""

    images: np.ndarray | list[str]
    labels: np.ndarray
    classes: list[str]


class ImageDataset(Dataset):
    """The images of `source` at `indices`, decoded on access and passed through `transform`
    (which draws fresh randomness on every call, as MultiView needs)."""

    def __init__(self, source: ImageSource, indices: np.ndarray, transform: Any):
        self.source, self.indices, self.transform = source, np.asarray(indices), transform
        self.targets = source.labels[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> Image.Image:
        """The raw RGB image of item i."""
        item = self.source.images[int(self.indices[i])]
        if isinstance(item, str):
            with Image.open(item) as img:
                return img.convert("RGB")
        return Image.fromarray(item)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(i)), int(self.targets[i])


def training_pool(labels: np.ndarray, num_classes: int, spec: Any) -> np.ndarray:
    """Indices of the official training set that a study uses: a seeded per-class subset
    (`subset_per_class`), then the long-tailed profile (`imbalance_ratio`)."""
    pool = np.arange(len(labels), dtype=np.int64)
    if spec.subset_per_class is not None:
        counts = np.bincount(labels, minlength=num_classes)
        if counts.min() < spec.subset_per_class:
            raise ValueError(
                f"dataset.subset_per_class: {spec.subset_per_class} is more than the smallest "
                f"class has ({counts.min()}); lower it or remove it"
            )
        pool = per_class_subset(labels, [spec.subset_per_class] * num_classes, spec.split_seed)
    if spec.imbalance_ratio is not None:
        keep = longtail_subset(labels[pool], num_classes, spec.imbalance_ratio, spec.split_seed)
        pool = pool[keep]
    return pool


def split_official(
    train_labels: np.ndarray, test_labels: np.ndarray, num_classes: int, spec: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices: val is a seeded stratified hold-out (`val_fraction`) of the
    training pool; test is the official test set (capped by `test_per_class`)."""
    pool = training_pool(train_labels, num_classes, spec)
    tr, va, _ = stratified_split(train_labels[pool], (spec.val_fraction, 0.0), spec.split_seed)
    test = np.arange(len(test_labels), dtype=np.int64)
    if spec.test_per_class is not None:
        per_class = [min(spec.test_per_class, int(n)) for n in np.bincount(test_labels)]
        test = per_class_subset(test_labels, per_class, spec.split_seed)
    return pool[tr], pool[va], test


def make_bundle(
    spec: Any,
    train: ImageSource,
    test: ImageSource,
    stats: tf.Stats,
    size: int,
    eval_resize: int | None = None,
    beton_name: str | None = None,
) -> DataBundle:
    """A DataBundle over an official train/test pair, with the paper's augmentations; with
    `loader: ffcv` the bundle also carries a `train_loader` reading `<beton_dir>/<beton_name>`."""
    k = len(train.classes)
    tr, va, te = split_official(train.labels, test.labels, k, spec)
    plain = tf.eval_transform(size, stats, eval_resize)
    augment = spec.augment
    train_loader = None
    if spec.loader == "ffcv":
        beton = beton_path(spec.beton_dir, beton_name)
        train_loader = FFCVTrainLoaderFactory(
            beton, tr, size, stats, augment, num_workers=spec.num_workers
        )
    return DataBundle(
        train=ImageDataset(
            train, tr, tf.classifier_transform(size, stats, spec.crop) if augment else plain
        ),
        train_eval=ImageDataset(train, tr, plain),
        val=ImageDataset(train, va, plain),
        test=ImageDataset(test, te, plain),
        num_classes=k,
        input_shape=(3, size, size),
        class_counts=tuple(int(n) for n in np.bincount(train.labels[tr], minlength=k)),
        train_contrastive=ImageDataset(
            train, tr, tf.contrastive_transform(size, stats) if augment else plain
        ),
        train_loader=train_loader,
    )
