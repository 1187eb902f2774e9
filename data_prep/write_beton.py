"""Write a dataset's official splits to FFCV `.beton` files (`<out>/<name>_<split>.beton`).

    python -m data_prep.write_beton --dataset cifar10 --root ~/.cache/ncstudy/cifar --out betons/

Images are stored raw (exact pixels) or as JPEG (smaller, lossy); the order is the dataset's own
index order, so the training indices of a DataBundle address the same images in the file.
The long-tailed and subset variants read the full training file through those indices.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ncstudy.data.ffcv_loader import BETON_NAMES, beton_path
from ncstudy.data.images import ImageSource


class RawItems:
    """(PIL image, label) pairs of an ImageSource, as FFCV's writer reads them."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        item = self.source.images[i]
        if isinstance(item, str):
            with Image.open(item) as img:
                return img.convert("RGB"), int(self.source.labels[i])
        return Image.fromarray(np.asarray(item)), int(self.source.labels[i])


def official_sources(dataset: str, root: str | None, download: bool) -> dict[str, ImageSource]:
    """{"train": ..., "test": ...} of a registered image dataset, in its index order."""
    from ncstudy.data import cifar, imagefolder

    if dataset not in BETON_NAMES:
        raise ValueError(f"--dataset: {dataset!r} has no FFCV writer; valid: {sorted(BETON_NAMES)}")
    if dataset.startswith("cifar1") and "jpeg" not in dataset:
        which = dataset.removesuffix("_lt")
        spec = argparse.Namespace(root=root)
        train, test = cifar.load_cifar(which, cifar.cifar_root(spec), download)
        return {"train": train, "test": test}
    if dataset.startswith("cifar10_jpeg"):
        folder = imagefolder.cifar10_jpeg_root(argparse.Namespace(root=root))
    elif root is None:
        raise ValueError(f"--root: {dataset} needs the ImageFolder root (train/<class>/*)")
    else:
        folder = Path(root).expanduser()
    return {
        "train": imagefolder.scan_imagefolder(folder / "train"),
        "test": imagefolder.scan_imagefolder(imagefolder.test_split_dir(folder)),
    }


def write_beton(
    source: ImageSource,
    path: str | Path,
    mode: str = "raw",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    num_workers: int = 1,
) -> Path:
    """Write one split to `path` (FFCV's writer shows a progress bar). `mode`: raw | jpg."""
    from ncstudy.data.ffcv_loader import require_ffcv

    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if mode not in ("raw", "jpg"):
        raise ValueError(f"--mode: {mode!r}; use raw (exact pixels) or jpg (smaller)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "image": RGBImageField(
            write_mode=mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality
        ),
        "label": IntField(),
    }
    writer = DatasetWriter(str(path), fields, num_workers=num_workers)
    writer.from_indexed_dataset(RawItems(source), chunksize=256)
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: write the train (and test) splits of one dataset."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(BETON_NAMES))
    p.add_argument("--root", default=None, help="dataset root (as dataset.root in the YAML)")
    p.add_argument("--out", required=True, help="folder for the .beton files (dataset.beton_dir)")
    p.add_argument("--mode", default="raw", choices=["raw", "jpg"])
    p.add_argument("--max-resolution", type=int, default=None, help="longest side (ImageNet)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--splits", nargs="+", default=["train", "test"], choices=["train", "test"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--download", action="store_true", help="torchvision download (CIFAR)")
    args = p.parse_args(argv)
    sources = official_sources(args.dataset, args.root, args.download)
    for split in args.splits:
        out = beton_path(args.out, BETON_NAMES[args.dataset], split)
        write_beton(
            sources[split], out, args.mode, args.max_resolution, args.jpeg_quality, args.workers
        )
        print(f"wrote {out} ({len(sources[split].labels)} images)")


if __name__ == "__main__":
    main()
