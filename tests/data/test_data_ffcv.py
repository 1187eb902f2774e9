"""The FFCV path against the torchvision path on the same data: the beton writer, the same
labels in the same order as DistributedSampler on every rank and epoch, equivalent batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from ncstudy.config import DatasetSpec
from ncstudy.data import build_data
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip

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


def test_ffcv_pipelines_crop_each_view_from_the_whole_image() -> None:
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import RandomHorizontalFlip

    from ncstudy.data import transforms as tf
    from ncstudy.data.ffcv_loader import _image_pipelines

    views = _image_pipelines(32, augment=True, views=3)
    assert list(views) == ["image", "image_view1", "image_view2"]
    decoders = [spec.decoder for spec in views.values()]
    assert len({id(d) for d in decoders}) == 3  # each view draws its own crop
    for spec in views.values():
        assert spec.source == "image"  # every view decodes the same stored image, uncropped
        assert isinstance(spec.decoder, RandomResizedCropRGBImageDecoder)
        assert spec.decoder.scale == tf.CROP_SCALE and spec.decoder.output_size == (32, 32)
        assert spec.decoder.ratio == pytest.approx((3 / 4, 4 / 3))  # torchvision's default
        assert isinstance(spec.transforms[0], RandomHorizontalFlip)
    plain = _image_pipelines(64, augment=False, views=1)["image"]
    assert isinstance(plain[0], CenterCropRGBImageDecoder) and plain[0].ratio == 224 / 256


STRIPE = 4  # black columns at the left edge of white 80x80 images


@pytest.fixture(scope="module")
def striped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An ImageFolder of white 80x80 images with a black stripe in columns 0-3, and its beton:
    a centre crop of 224/256 (columns 5-74) never sees the stripe, a crop of the whole image
    often does."""
    from PIL import Image

    root = tmp_path_factory.mktemp("striped")
    img = np.full((80, 80, 3), 255, np.uint8)
    img[:, :STRIPE] = 0
    for split, n in (("train", 10), ("test", 1)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(img).save(root / split / cls / f"{i}.png")
    betons = root / "betons"
    write_main(["--dataset", "imagefolder", "--root", str(root), "--out", str(betons)])
    return root, betons


def _stripe_rate(views: torch.Tensor) -> float:
    """Fraction of normalised (ImageNet statistics) views that show the stripe: a pixel below
    half the brightest one (jitter moves black and white together; grayscale keeps them)."""
    from ncstudy.data import transforms as tf

    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in tf.IMAGENET_STATS)
    pixels = (views.flatten(0, 1) * std + mean).amax(dim=1).flatten(1)  # (N, H*W)
    return float((pixels.min(dim=1).values < 0.5 * pixels.max(dim=1).values).float().mean())


@pytest.mark.slow
def test_scl_views_sample_crops_from_the_whole_image_on_both_paths(striped) -> None:
    root, betons = striped
    spec = DatasetSpec(
        name="imagefolder",
        root=str(root),
        image_size=64,
        loader="ffcv",
        beton_dir=str(betons),
        val_fraction=0.0,
    )
    b = build_data(spec, seed=0)
    torch.manual_seed(0)
    ffcv_views, torch_views = [], []
    loader = b.train_loader(0, 1, 10, 0, 2)
    from ncstudy.train import MultiView

    for epoch in range(6):
        loader.set_epoch(epoch)
        ffcv_views += [x for x, _ in loader]
        views = MultiView(b.train_contrastive, 2)
        torch_views += [x for x, _ in torch_batches(views, 0, 1, 10, 0, epoch)]
    ffcv_x, torch_x = torch.cat(ffcv_views), torch.cat(torch_views)
    assert ffcv_x.shape == torch_x.shape == (120, 2, 3, 64, 64)
    assert not torch.allclose(ffcv_x[:, 0], ffcv_x[:, 1])  # two independent crops per image
    p_ffcv, p_torch = _stripe_rate(ffcv_x), _stripe_rate(torch_x)
    # both crop the whole image: the stripe shows in a share of the 240 views (the old centre
    # crop first gave 0), at the same rate up to sampling noise (4 sd of a difference)
    assert p_torch > 0.05 and p_ffcv > 0.05
    sd = (2 * 0.25 / 240) ** 0.5
    assert abs(p_ffcv - p_torch) < 4 * sd, (p_ffcv, p_torch)
