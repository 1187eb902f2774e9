"""Loader throughput (images/s) on the offline CIFAR-10 copy with the training augmentation
(RandomResizedCrop scale 0.2-1 + flip, normalised float32 batches): FFCV (raw and JPEG betons)
against the torchvision DataLoader + DistributedSampler path, in the same process; and the SCL
two-view augmentation (crop + flip + colour jitter + grayscale per view) on both paths.

    python benchmarks/bench_loaders.py --per-class 500 --epochs 2 --workers 0 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler

from data_prep.write_beton import official_sources, write_beton
from ncstudy.config import DatasetSpec
from ncstudy.data import build_data
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.train import MultiView

# NCSTUDY_CIFAR10_ZIP, else the offline CIFAR-10 JPEG copy next to the repository
OFFLINE_ZIP = shared_cifar10_zip() or (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"
)


def images_per_second(make: Callable[[int], Iterable], epochs: int) -> float:
    """Best epoch throughput after one warm-up epoch (FFCV compiles its pipeline in the first)."""
    best = 0.0
    for epoch in range(epochs + 1):
        loader: Iterable = make(epoch)
        started, n = time.perf_counter(), 0
        for x, _ in loader:
            n += len(x)
        rate = n / (time.perf_counter() - started)
        if epoch > 0:
            best = max(best, rate)
    return best


def main() -> None:
    """Prepare a subset, write its betons and print one line per loader."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--per-class", type=int, default=500, help="training images per class")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_loaders_"))
    root = extract_imagefolder_zip(OFFLINE_ZIP, work / "img", {"train": args.per_class, "test": 1})
    train = official_sources("cifar10_jpeg", str(root), False)["train"]
    for mode in ("raw", "jpg"):
        write_beton(train, work / mode / "cifar10_jpeg_train.beton", mode, jpeg_quality=90)

    def bundle(beton_dir: Path, workers: int):
        spec = DatasetSpec(
            name="cifar10_jpeg",
            root=str(root),
            val_fraction=0.0,
            loader="ffcv",
            beton_dir=str(beton_dir),
            num_workers=workers,
        )
        return build_data(spec, seed=0)

    b = bundle(work / "raw", 1)
    print(
        f"{len(b.train)} images of 32x32, batch {args.batch_size}, threads=1, "
        f"torch={torch.__version__}"
    )
    print(f"{'loader':34s} {'workers':>7s} {'images/s':>10s} {'x torchvision':>14s}")
    baseline: dict[int, float] = {}
    for workers in args.workers:

        def torch_loader(epoch: int, w: int = workers):
            sampler = DistributedSampler(b.train, num_replicas=1, rank=0, seed=0)
            sampler.set_epoch(epoch)
            return DataLoader(
                b.train,
                args.batch_size,
                sampler=sampler,
                drop_last=True,
                num_workers=w,
                persistent_workers=False,
            )

        baseline[workers] = images_per_second(torch_loader, args.epochs)
        print(
            f"{'torchvision (PIL, ImageFolder)':34s} {workers:7d} {baseline[workers]:10.0f} "
            f"{1.0:14.2f}"
        )
    for mode in ("raw", "jpg"):
        for workers in args.workers:
            loader = bundle(work / mode, max(1, workers)).train_loader(0, 1, args.batch_size, 0, 1)

            def ffcv_loader(epoch: int, loader=loader):
                loader.set_epoch(epoch)
                return loader

            rate = images_per_second(ffcv_loader, args.epochs)
            ratio = rate / baseline[workers]
            label = f"ffcv ({mode} beton)"
            print(f"{label:34s} {max(1, workers):7d} {rate:10.0f} {ratio:14.2f}")
    # SCL: 2 views per image; images/s counts images (each with its 2 views)
    scl_base: dict[int, float] = {}
    for workers in args.workers:

        def torch_views(epoch: int, w: int = workers):
            views = MultiView(b.train_contrastive, 2)
            sampler = DistributedSampler(views, num_replicas=1, rank=0, seed=0)
            sampler.set_epoch(epoch)
            return DataLoader(
                views, args.batch_size, sampler=sampler, drop_last=True, num_workers=w
            )

        scl_base[workers] = images_per_second(torch_views, args.epochs)
        print(
            f"{'SCL 2 views, torchvision':34s} {workers:7d} {scl_base[workers]:10.0f} {1.0:14.2f}"
        )
    for workers in args.workers:
        loader = bundle(work / "raw", max(1, workers)).train_loader(0, 1, args.batch_size, 0, 2)

        def ffcv_views(epoch: int, loader=loader):
            loader.set_epoch(epoch)
            return loader

        rate = images_per_second(ffcv_views, args.epochs)
        label = "SCL 2 views, ffcv (raw beton)"
        print(f"{label:34s} {max(1, workers):7d} {rate:10.0f} {rate / scl_base[workers]:14.2f}")


if __name__ == "__main__":
    main()
