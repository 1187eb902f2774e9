"""The FFCV path against the torchvision path on the same data: the beton writer, the same
labels in the same order as DistributedSampler on every rank and epoch, equivalent batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ncstudy.data import build_data
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.spec import DatasetSpec

pytest.importorskip("ffcv")
from data_prep.write_beton import main as write_main  # noqa: E402

PER_CLASS = 12
# numba may print a harmless KeyError from a finaliser at exit (see STACK.md)
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny extracted CIFAR-10 copy and its raw and JPEG betons (written by the CLI)."""
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    base = tmp_path_factory.mktemp("ffcv")
    root = extract_imagefolder_zip(shared_cifar10_zip(), base / "img", {"train": PER_CLASS})
    (root / "test").mkdir()
    for cls in (root / "train").iterdir():  # a test split is required; reuse two images
        (root / "test" / cls.name).mkdir()
        for f in sorted(cls.iterdir())[:2]:
            (root / "test" / cls.name / f.name).write_bytes(f.read_bytes())
    raw, jpg = base / "raw", base / "jpg"
    args = ["--dataset", "cifar10_jpeg", "--root", str(root), "--splits", "train"]
    write_main([*args, "--out", str(raw)])
    write_main([*args, "--out", str(jpg), "--mode", "jpg", "--jpeg-quality", "95"])
    return root, raw, jpg


def bundle(root: Path, beton_dir: Path, augment: bool):
    spec = DatasetSpec(
        name="cifar10_jpeg",
        root=str(root),
        loader="ffcv",
        beton_dir=str(beton_dir),
        augment=augment,
        val_fraction=0.25,
    )
    return build_data(spec, seed=0)


def torch_batches(dataset, rank: int, world: int, batch: int, seed: int, epoch: int) -> list:
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True))


def test_raw_beton_gives_identical_batches_on_every_rank_and_epoch(data_dirs) -> None:
    root, raw, _ = data_dirs
    b = bundle(root, raw, augment=False)
    for rank in range(2):
        loader = b.train_loader(rank, 2, 8, 3, 1)
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            ours = list(loader)
            ref = torch_batches(b.train, rank, 2, 8, 3, epoch)
            assert len(ours) == len(ref) == len(loader)
            for (x, y), (xr, yr) in zip(ours, ref, strict=True):
                assert torch.equal(y, yr)
                assert x.dtype == torch.float32 and torch.allclose(x, xr, atol=1e-5)


def test_jpeg_beton_is_close_and_ranks_partition_the_data(data_dirs) -> None:
    root, _, jpg = data_dirs
    b = bundle(root, jpg, augment=False)
    seen = []
    for rank in range(2):
        loader = b.train_loader(rank, 2, 5, 0, 1)
        for (x, y), (xr, yr) in zip(loader, torch_batches(b.train, rank, 2, 5, 0, 0), strict=True):
            assert torch.equal(y, yr)
            assert (x - xr).abs().mean() < 0.1  # re-encoded at quality 95: ~1/255 per pixel
            seen.append(y)
    labels = torch.cat(seen)
    assert len(labels) == len(b.train)  # 90 images, 2 ranks x 9 batches of 5
    assert np.bincount(labels.numpy()).tolist() == list(b.class_counts)


def test_augmented_batches_keep_labels_and_statistics(data_dirs) -> None:
    root, raw, _ = data_dirs
    b = bundle(root, raw, augment=True)
    loader = b.train_loader(0, 1, 10, 1, 1)
    ref = torch_batches(b.train_eval, 0, 1, 10, 1, 0)
    xs = []
    for (x, y), (xr, yr) in zip(loader, ref, strict=True):
        assert torch.equal(y, yr) and x.shape == xr.shape
        xs.append(x)
    x = torch.cat(xs)
    plain = torch.cat([xr for xr, _ in ref])
    assert not torch.allclose(x, plain)  # cropped and flipped
    # Crops resample the same images: per-channel means agree with the plain images' roughly.
    assert torch.allclose(x.mean((0, 2, 3)), plain.mean((0, 2, 3)), atol=0.15)


def test_contrastive_views_have_the_multiview_layout(data_dirs) -> None:
    root, raw, _ = data_dirs
    b = bundle(root, raw, augment=True)
    loader = b.train_loader(1, 2, 4, 0, 2)
    x, y = next(iter(loader))
    assert x.shape == (4, 2, 3, 32, 32) and y.shape == (4,)
    assert not torch.allclose(x[:, 0], x[:, 1])
    assert torch.equal(y, torch_batches(b.train, 1, 2, 4, 0, 0)[0][1])


def test_missing_beton_names_the_writer(tmp_path: Path, data_dirs) -> None:
    root, _, _ = data_dirs
    b = bundle(root, tmp_path, augment=False)
    with pytest.raises(FileNotFoundError, match="data_prep.write_beton"):
        b.train_loader(0, 1, 4, 0, 1)
