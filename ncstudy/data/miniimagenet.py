"""miniImageNet (Vinyals et al. 2016) as a 100-class classification dataset, as "Are All Losses
Created Equal" trains WideResNet18 on it: the 100 classes of its standard split (Ravi &
Larochelle's train/val/test class lists, 64 + 16 + 20 classes of 600 images each) together,
84 x 84 images, an ImageFolder tree under `dataset.root`. No download exists: HOW_TO_GET says
how to build the tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ncstudy.data.bundle import DataBundle
from ncstudy.data.imagefolder import scan_imagefolder, test_split_dir
from ncstudy.data.images import make_bundle
from ncstudy.data.registry import input_stats

NAME = "miniimagenet"
CLASSES = 100
SIZE = 84
HOW_TO_GET = (
    "miniImageNet has no download; build it from ImageNet-1K's training images with the "
    "standard split (Ravi & Larochelle 2017: train.csv, val.csv and test.csv list 600 images "
    "for each of 64 + 16 + 20 = 100 classes), resize them to 84x84 and lay all 100 classes out "
    "as <root>/train/<wnid>/*.jpg and <root>/test/<wnid>/*.jpg (e.g. 500 training and 100 test "
    "images of each class), then set dataset.root to <root>"
)


def build_miniimagenet(spec: Any, seed: int) -> DataBundle:
    """The tree under `dataset.root` (100 class folders in train/ and val/ or test/), CIFAR's
    recipe at 84 px: the padded crop or the resized crop for training, the plain image (resized
    to 84 when the files are larger) for evaluation."""
    if spec.root is None:
        raise ValueError(f"dataset.root: {NAME} needs root; {HOW_TO_GET}")
    root = Path(spec.root).expanduser()
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"dataset.root: {root / 'train'} does not exist; {HOW_TO_GET}")
    train, test = scan_imagefolder(root / "train"), scan_imagefolder(test_split_dir(root))
    if len(train.classes) != CLASSES:
        raise ValueError(
            f"dataset.root: {root / 'train'} has {len(train.classes)} class folders, {NAME} has "
            f"{CLASSES}; use name: imagefolder for other trees"
        )
    if test.classes != train.classes:
        raise ValueError(f"dataset.root: {root}: train/ and its test split have different classes")
    stats = input_stats(spec)
    assert stats is not None  # the registry gives it ImageNet's statistics
    size = spec.image_size or SIZE
    return make_bundle(spec, train, test, stats, size, eval_resize=size)
