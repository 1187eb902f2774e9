"""ImageFolder trees (`<root>/train/<class>/*`, `<root>/val/<class>/*`: ImageNet-100/1K and any
other) and the offline CIFAR-10 JPEG copy, which ships as a zip in that layout.

Classes are the sorted sub-folder names (torchvision's ImageFolder order); files are sorted
within a class, so indices are stable and match the FFCV files `data_prep` writes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ncstudy.data import transforms as tf
from ncstudy.data.bundle import DataBundle
from ncstudy.data.imagenet100 import check_imagenet100_tree
from ncstudy.data.images import ImageSource, make_bundle
from ncstudy.data.registry import dataset_facts, input_stats

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
TEST_SPLITS = ("val", "test")  # ImageNet calls its held-out split val, the CIFAR copy test


def scan_imagefolder(split_dir: str | Path) -> ImageSource:
    """The images under `split_dir/<class>/`, classes and files in sorted order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"dataset.root: {split_dir} does not exist; an ImageFolder root holds "
            "train/<class>/*.jpg and val/<class>/*.jpg (or test/)"
        )
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    for c, name in enumerate(classes):
        files = sorted(
            f for f in os.listdir(split_dir / name) if f.lower().endswith(IMAGE_SUFFIXES)
        )
        paths += [str(split_dir / name / f) for f in files]
        labels += [c] * len(files)
    if not paths:
        raise FileNotFoundError(f"dataset.root: no images under {split_dir}/<class>/")
    return ImageSource(paths, np.asarray(labels, dtype=np.int64), classes)


def test_split_dir(root: Path) -> Path:
    """`root/val` (ImageNet) or `root/test` (the CIFAR-10 copy), whichever exists."""
    for name in TEST_SPLITS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"dataset.root: {root} has neither val/ nor test/ (ImageFolder layout)")


def extract_imagefolder_zip(
    zip_path: str | Path, dest: str | Path, per_class: dict[str, int] | None = None
) -> Path:
    """Extract an ImageFolder zip (`<top>/<split>/<class>/<file>`) into `dest/<split>/...`;
    `per_class` ({"train": 20, "test": 10}) keeps only the first files of each class and
    split (selective reading, for tests). Returns `dest`."""
    dest = Path(dest)
    kept: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) != 4 or not parts[3]:
                continue
            _, split, cls, fname = parts
            if per_class is not None:
                if split not in per_class or kept.get((split, cls), 0) >= per_class[split]:
                    continue
                kept[(split, cls)] = kept.get((split, cls), 0) + 1
            target = dest / split / cls / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
    return dest


CIFAR10_ZIP_ENV = "NCSTUDY_CIFAR10_ZIP"
NO_CIFAR10_JPEG = (
    "set dataset.root to an extracted copy (train/<class>/*.jpg, test/<class>/*.jpg) or "
    f"{CIFAR10_ZIP_ENV} to a zip of one; or use `name: cifar10` with `download: true` "
    "(torchvision downloads CIFAR-10; the same subset options apply)"
)


def shared_cifar10_zip() -> Path | None:
    """A CIFAR-10 JPEG zip in ImageFolder layout named by $NCSTUDY_CIFAR10_ZIP, or None
    (ncstudy ships no data; the tests point the variable at their offline copy)."""
    env = os.environ.get(CIFAR10_ZIP_ENV, "").strip()
    return Path(env).expanduser() if env else None


# Where the shared CIFAR-10 JPEG zip is extracted, relative to the home folder.
CIFAR10_JPEG_CACHE = Path(".cache", "ncstudy", "cifar10-jpeg")


def cifar10_jpeg_cache() -> Path:
    """The extracted copy of the shared zip: ~/.cache/ncstudy/cifar10-jpeg (the home folder of
    the moment, so a changed $HOME is honoured)."""
    return Path.home() / CIFAR10_JPEG_CACHE


def cifar10_jpeg_root(spec: Any) -> Path:
    """The extracted copy: `dataset.root`, or ~/.cache/ncstudy/cifar10-jpeg (extracted on first
    use from the zip in $NCSTUDY_CIFAR10_ZIP)."""
    if spec.root is not None:
        return Path(spec.root).expanduser()
    root = cifar10_jpeg_cache()
    if root.is_dir():
        return root
    zip_path = shared_cifar10_zip()
    if zip_path is None or not zip_path.is_file():
        where = f"{CIFAR10_ZIP_ENV}={zip_path} is not a file" if zip_path else "no zip given"
        raise FileNotFoundError(
            f"dataset.root: not given, no extracted copy at {root} and {where}; {NO_CIFAR10_JPEG}"
        )
    # Extract next to the target and rename: concurrent trials never see a partial copy.
    tmp = Path(tempfile.mkdtemp(prefix=".cifar10-jpeg-", dir=_mkdir(root.parent)))
    extract_imagefolder_zip(zip_path, tmp)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def folder_bundle(
    spec: Any,
    root: Path,
    stats: tf.Stats,
    default_size: int,
    beton_name: str,
    expected_classes: int | None = None,
) -> DataBundle:
    """DataBundle over an ImageFolder root (train/ + val/ or test/)."""
    train, test = scan_imagefolder(root / "train"), scan_imagefolder(test_split_dir(root))
    if expected_classes is not None and len(train.classes) != expected_classes:
        raise ValueError(
            f"dataset.root: {root / 'train'} has {len(train.classes)} class folders, "
            f"{spec.name} has {expected_classes}; use name: imagefolder for other trees"
        )
    if test.classes != train.classes:
        raise ValueError(f"dataset.root: {root}: train/ and its test split have different classes")
    size = spec.image_size or default_size
    resize = round(size * 8 / 7) if size >= 64 else size  # ImageNet's 256 -> 224 centre crop
    return make_bundle(spec, train, test, stats, size, resize, beton_name)


def _stats(spec: Any) -> tf.Stats:
    stats = input_stats(spec)
    assert stats is not None  # the registry gives every image dataset its statistics
    return stats


def _classes(name: str) -> int:
    classes = dataset_facts(name).num_classes
    assert isinstance(classes, int)  # the named trees have a fixed class count
    return classes


def build_imagefolder(spec: Any, seed: int) -> DataBundle:
    """Any ImageFolder tree; ImageNet statistics, 224 px unless `image_size` says otherwise."""
    root = Path(spec.root).expanduser()
    return folder_bundle(spec, root, _stats(spec), 224, "imagefolder")


def _imagenet_builder(name: str) -> Callable[[Any, int], DataBundle]:
    classes = _classes(name)

    def build(spec: Any, seed: int) -> DataBundle:
        if spec.root is None:
            raise ValueError(f"dataset.root: {name} needs root (train/<wnid>/*, val/<wnid>/*)")
        root = Path(spec.root).expanduser()
        if name == "imagenet100":  # the standard subset, not any 100 classes
            check_imagenet100_tree(root / "train")
        return folder_bundle(spec, root, _stats(spec), 224, name, classes)

    build.__doc__ = f"{name}: an ImageFolder tree with {classes} classes."
    return build


# The ImageNet-type datasets: name -> class count (each an ImageFolder tree).
IMAGENET_CLASSES = {name: _classes(name) for name in ("imagenet", "imagenet100")}


def build_cifar10_jpeg(spec: Any, seed: int) -> DataBundle:
    """A CIFAR-10 JPEG copy in ImageFolder layout (`dataset.root`, or extracted from the zip in
    $NCSTUDY_CIFAR10_ZIP): official train/test, CIFAR statistics."""
    root, classes = cifar10_jpeg_root(spec), _classes("cifar10_jpeg")
    return folder_bundle(spec, root, _stats(spec), 32, "cifar10_jpeg", classes)


def build_cifar10_jpeg_lt(spec: Any, seed: int) -> DataBundle:
    """The offline CIFAR-10 copy with the long-tailed profile (`imbalance_ratio`)."""
    root = cifar10_jpeg_root(spec)
    return folder_bundle(spec, root, _stats(spec), 32, "cifar10_jpeg")


# name -> builder (the names and facts: ncstudy.data.registry)
BUILDERS = {
    "imagefolder": build_imagefolder,
    **{name: _imagenet_builder(name) for name in IMAGENET_CLASSES},
    "cifar10_jpeg": build_cifar10_jpeg,
    "cifar10_jpeg_lt": build_cifar10_jpeg_lt,
}
