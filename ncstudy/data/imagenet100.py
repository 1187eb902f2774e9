"""ImageNet-100: the standard 100-class subset of ImageNet-1K of CMC (Tian, Krishnan & Isola,
"Contrastive Multiview Coding", ECCV 2020; list from github.com/HobbitLong/CMC, imagenet100.txt,
issue #21), used by the contrastive-learning literature the source paper follows. The list is
shipped as package data (imagenet100_classes.txt, one WordNet id per line, CMC's order)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def imagenet100_classes() -> list[str]:
    """The 100 WordNet ids of CMC's ImageNet-100, in CMC's order."""
    text = resources.files("ncstudy.data").joinpath("imagenet100_classes.txt").read_text()
    return text.split()


def check_imagenet100_tree(train_dir: Path) -> None:
    """A ValueError naming the differences when the class folders of `train_dir` are not CMC's
    100 classes (another subset trains a different benchmark under the same name)."""
    if not train_dir.is_dir():
        return  # the folder scan names the missing folder
    found = {p.name for p in train_dir.iterdir() if p.is_dir()}
    expected = set(imagenet100_classes())
    if found == expected or len(found) != len(expected):
        return  # a wrong class count has its own error (folder_bundle)
    missing, extra = sorted(expected - found), sorted(found - expected)
    raise ValueError(
        f"dataset.root: {train_dir} is not the standard ImageNet-100 (CMC's class list): "
        f"{len(missing)} of its classes are missing (e.g. {', '.join(missing[:3])}) and "
        f"{len(extra)} others present (e.g. {', '.join(extra[:3])}). Fix: build the tree with "
        "`python -m data_prep.imagenet100 --imagenet <ImageNet root> --out <dir>`, or use "
        "name: imagefolder for another subset"
    )


def link_imagenet100(imagenet: Path, out: Path) -> int:
    """Make `out`/{train,val}/<wnid> symbolic links to the 100 classes of an ImageNet-1K
    ImageFolder tree (`imagenet`/{train,val}/<wnid>); returns the number of links made."""
    made = 0
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
        for wnid in imagenet100_classes():
            source = imagenet / split / wnid
            if not source.is_dir():
                raise FileNotFoundError(
                    f"{source}: not found; --imagenet must hold {split}/<wnid>/"
                )
            link = out / split / wnid
            if not link.exists():
                os.symlink(source.resolve(), link, target_is_directory=True)
                made += 1
    return made
