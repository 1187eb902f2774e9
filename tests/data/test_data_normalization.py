"""`dataset.normalization`: images normalised with the dataset's statistics or ImageNet's (an
encoder started from ImageNet weights expects ImageNet's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from ncstudy.config import DatasetSpec
from ncstudy.data import build_data
from ncstudy.data.class_subset import CIFAR10_CLASSES
from ncstudy.data.registry import CIFAR10_STATS, IMAGENET_STATS, input_stats

GREY = 128


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 JPEG tree (train/, test/, CIFAR-10's class names) of uniform grey images."""
    root = tmp_path_factory.mktemp("grey")
    for split in ("train", "test"):
        for name in CIFAR10_CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                image = np.full((32, 32, 3), GREY, np.uint8)
                Image.fromarray(image).save(root / split / name / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("normalization", "stats"), [("dataset", CIFAR10_STATS), ("imagenet", IMAGENET_STATS)]
)
def test_the_test_images_are_normalised_with_the_chosen_statistics(
    tree: Path, normalization: str, stats: tuple
) -> None:
    spec = DatasetSpec(name="cifar10_jpeg", root=str(tree), normalization=normalization)
    assert input_stats(spec) == stats
    x, _ = build_data(spec, 0).test[0]
    mean, std = np.asarray(stats[0]), np.asarray(stats[1])
    expected = (GREY / 255 - mean) / std
    assert np.allclose(x.numpy().mean(axis=(1, 2)), expected, atol=1e-6)


def test_a_dataset_without_rgb_images_refuses_imagenet_normalisation() -> None:
    with pytest.raises(ValidationError, match="normalization: imagenet applies to RGB"):
        DatasetSpec(name="digits", normalization="imagenet")
    assert input_stats(DatasetSpec(name="digits")) is None
