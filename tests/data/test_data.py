"""Image datasets: shapes, class counts (long-tailed profile), deterministic splits, the
un-augmented path against an independent decode, and clear errors for missing data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ncstudy.config import DatasetSpec, SpecError, parse_study
from ncstudy.data import build_data, list_datasets
from ncstudy.data import transforms as tf
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.data.longtail import longtail_counts

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 6


@pytest.fixture(scope="session")
def cifar_jpeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 training and 6 test images per class of the offline CIFAR-10 copy."""
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    root = tmp_path_factory.mktemp("cifar10_jpeg")
    return extract_imagefolder_zip(
        shared_cifar10_zip(), root, {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    )


def spec(root: Path, **kw: object) -> DatasetSpec:
    return DatasetSpec(**{"name": "cifar10_jpeg", "root": str(root), **kw})


def test_registry_lists_the_image_datasets() -> None:
    names = set(list_datasets())
    assert {"cifar10", "cifar100", "cifar10_lt", "cifar100_lt", "cifar10_jpeg"} <= names
    assert {"imagefolder", "imagenet", "imagenet100", "digits"} <= names


def test_cifar_jpeg_shapes_and_counts(cifar_jpeg_root: Path) -> None:
    b = build_data(spec(cifar_jpeg_root, val_fraction=0.25), seed=0)
    assert b.num_classes == 10 and b.input_shape == (3, 32, 32)
    n_val = round(0.25 * TRAIN_PER_CLASS)
    assert b.class_counts == (TRAIN_PER_CLASS - n_val,) * 10
    assert len(b.train) == len(b.train_eval) == 10 * (TRAIN_PER_CLASS - n_val)
    assert len(b.val) == 10 * n_val and len(b.test) == 10 * TEST_PER_CLASS
    x, y = b.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert np.bincount(b.test.targets).tolist() == [TEST_PER_CLASS] * 10


def test_splits_are_deterministic_disjoint_and_seeded(cifar_jpeg_root: Path) -> None:
    a = build_data(spec(cifar_jpeg_root), seed=0)
    again = build_data(spec(cifar_jpeg_root), seed=5)  # the trial seed does not move the split
    other = build_data(spec(cifar_jpeg_root, split_seed=1), seed=0)
    assert np.array_equal(a.train.indices, again.train.indices)
    assert np.array_equal(a.val.indices, again.val.indices)
    assert not np.array_equal(a.val.indices, other.val.indices)
    assert not set(a.train.indices) & set(a.val.indices)
    assert len(set(a.train.indices) | set(a.val.indices)) == 10 * TRAIN_PER_CLASS


def test_un_augmented_items_match_an_independent_decode(cifar_jpeg_root: Path) -> None:
    b = build_data(spec(cifar_jpeg_root), seed=0)
    i = 7
    path = b.train_eval.source.images[b.train_eval.indices[i]]
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    mean, std = (np.asarray(s, dtype=np.float32) for s in tf.CIFAR10_STATS)
    expected = torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1))
    assert torch.allclose(b.train_eval[i][0], expected, atol=1e-6)
    assert torch.equal(b.train_eval[i][0], b.train_eval[i][0])
    assert b.train_eval[i][1] == b.train[i][1] == b.train_contrastive[i][1]


def test_training_views_draw_fresh_augmentation(cifar_jpeg_root: Path) -> None:
    b = build_data(spec(cifar_jpeg_root), seed=0)
    torch.manual_seed(0)
    assert not torch.equal(b.train[3][0], b.train[3][0])
    assert not torch.equal(b.train_contrastive[3][0], b.train_contrastive[3][0])
    plain = build_data(spec(cifar_jpeg_root, augment=False), seed=0)
    assert torch.equal(plain.train[3][0], plain.train_eval[3][0])


def test_grayscale_view_rate_is_about_one_fifth() -> None:
    torch.manual_seed(0)
    view = tf.contrastive_transform(16, tf.CIFAR10_STATS)
    colourful = Image.fromarray(
        np.stack([np.full((16, 16), v, np.uint8) for v in (250, 10, 10)], axis=-1)
    )
    gray = 0
    for _ in range(200):
        x = view(colourful) * torch.tensor(tf.CIFAR10_STATS[1]).view(3, 1, 1)
        x = x + torch.tensor(tf.CIFAR10_STATS[0]).view(3, 1, 1)
        gray += bool((x.max(0).values - x.min(0).values).max() < 1e-3)
    assert abs(gray / 200 - 0.2) < 0.085  # 3 binomial sd at n = 200


def test_longtail_profile_matches_the_formula() -> None:
    counts = longtail_counts(5000, 10, 0.01)
    assert counts[0] == 5000 and counts[-1] == 50
    assert counts == [int(5000 * 0.01 ** (c / 9) + 1e-9) for c in range(10)]
    assert all(a > b for a, b in zip(counts, counts[1:], strict=False))
    assert longtail_counts(500, 100, 0.1)[99] == 50
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_counts(10, 10, 2.0)


def test_longtail_bundle_keeps_the_profile_and_a_balanced_test(cifar_jpeg_root: Path) -> None:
    s = spec(cifar_jpeg_root, name="cifar10_jpeg_lt", imbalance_ratio=0.1, val_fraction=0.0)
    b = build_data(s, seed=0)
    assert list(b.class_counts) == longtail_counts(TRAIN_PER_CLASS, 10, 0.1)
    assert np.bincount(b.test.targets).tolist() == [TEST_PER_CLASS] * 10
    again = build_data(s, seed=3)
    assert np.array_equal(b.train.indices, again.train.indices)


def test_subset_per_class_and_test_cap(cifar_jpeg_root: Path) -> None:
    b = build_data(
        spec(cifar_jpeg_root, subset_per_class=10, val_fraction=0.2, test_per_class=3), 0
    )
    assert b.class_counts == (8,) * 10 and len(b.val) == 20
    assert np.bincount(b.test.targets).tolist() == [3] * 10
    with pytest.raises(ValueError, match="subset_per_class"):
        build_data(spec(cifar_jpeg_root, subset_per_class=TRAIN_PER_CLASS + 1), 0)


def _fake_cifar10(root: Path, per_batch: int = 6) -> None:
    """A tiny cifar-10-batches-py in torchvision's pickle format (random pixels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in np.arange(per_batch) % 3],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": ["a", "b", "c"] + [f"x{i}" for i in range(7)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_torchvision_cifar_path_reads_the_pickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import cifar

    _fake_cifar10(tmp_path)  # not the real files: skip torchvision's md5 checks
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    b = build_data(DatasetSpec(name="cifar10", root=str(tmp_path), val_fraction=0.0), 0)
    assert len(b.train) == 30 and len(b.test) == 6 and b.input_shape == (3, 32, 32)
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())
    pixels = raw["data"][0].reshape(3, 32, 32).astype(np.float32) / 255.0
    mean, std = (np.asarray(s, np.float32).reshape(3, 1, 1) for s in tf.CIFAR10_STATS)
    assert torch.allclose(b.train_eval[0][0], torch.from_numpy((pixels - mean) / std), atol=1e-6)


def test_missing_cifar_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download: true.*cifar-10-python.tar.gz"):
        build_data(DatasetSpec(name="cifar10", root=str(tmp_path)), 0)


def test_imagefolder_counts_classes_and_needs_root(cifar_jpeg_root: Path) -> None:
    study = {"name": "t", "losses": [{"name": "ce"}]}
    ok = parse_study({**study, "dataset": {"name": "imagefolder", "root": str(cifar_jpeg_root)}})
    from ncstudy.data.registry import dataset_num_classes

    assert dataset_num_classes(ok.dataset) == 10
    with pytest.raises(SpecError, match="dataset.root"):
        parse_study({**study, "dataset": {"name": "imagefolder"}})
    b = build_data(DatasetSpec(name="imagefolder", root=str(cifar_jpeg_root), image_size=32), 0)
    assert b.input_shape == (3, 32, 32) and len(b.test) == 10 * TEST_PER_CLASS
    with pytest.raises(ValueError, match="10 class folders, imagenet100 has 100"):
        build_data(DatasetSpec(name="imagenet100", root=str(cifar_jpeg_root)), 0)


@pytest.mark.parametrize("installed", [True, False])
def test_spec_refuses_incomplete_data_options(
    installed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ncstudy.data import ffcv_loader

    # the YAML's own mistakes are reported whether or not the ffcv extra is installed
    monkeypatch.setattr(ffcv_loader, "ffcv_installed", lambda: installed)
    study = {"name": "t", "losses": [{"name": "ce"}]}
    with pytest.raises(SpecError, match="imbalance_ratio"):
        parse_study({**study, "dataset": {"name": "cifar10_lt"}})
    with pytest.raises(SpecError, match="beton_dir: loader: ffcv needs the folder"):
        parse_study({**study, "dataset": {"name": "cifar10", "loader": "ffcv"}})
    with pytest.raises(SpecError, match="ffcv serves image datasets"):
        parse_study({**study, "dataset": {"name": "digits", "loader": "ffcv", "beton_dir": "/b"}})
    with pytest.raises(SpecError, match="imbalance_ratio"):
        parse_study({**study, "dataset": {"name": "cifar10", "imbalance_ratio": 5}})


def test_ffcv_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from ncstudy.data import ffcv_loader

    monkeypatch.setattr(ffcv_loader, "ffcv_installed", lambda: False)
    study = {"name": "t", "losses": [{"name": "ce"}]}
    data = {"name": "cifar10", "loader": "ffcv", "beton_dir": "/tmp"}
    with pytest.raises(SpecError, match="dataset: loader: ffcv is not installed.*torchvision"):
        parse_study({**study, "dataset": data})


def _ops(transform: object) -> list[object]:
    """The flat list of operations of a torchvision Compose (RandomApply: its inner ops)."""
    out: list[object] = []
    for op in transform.transforms:  # type: ignore[attr-defined]
        out.append(op)
        if isinstance(op, T.RandomApply):
            out += list(op.transforms)
    return out


def _kinds(transform: object) -> list[type]:
    return [type(op) for op in _ops(transform)]


RANDOM_OPS = (
    T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomApply, T.RandomGrayscale, T.ColorJitter,
    T.GaussianBlur,
)  # fmt: skip


def _check_classifier(transform: object, size: int, stats: tf.Stats) -> None:
    crop, flip, to_tensor, norm = _ops(transform)
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (size, size)
    assert crop.scale == (0.2, 1.0) and crop.ratio == pytest.approx((3 / 4, 4 / 3))
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(to_tensor, T.ToTensor)
    assert isinstance(norm, T.Normalize) and (tuple(norm.mean), tuple(norm.std)) == stats


def _check_contrastive(transform: object, size: int, stats: tf.Stats, blur: bool) -> None:
    ops = _ops(transform)
    crop, flip, jitter_p, jitter, gray = ops[:5]
    assert isinstance(crop, T.RandomResizedCrop) and crop.scale == (0.2, 1.0)
    assert crop.size == (size, size) and isinstance(flip, T.RandomHorizontalFlip)
    assert isinstance(jitter_p, T.RandomApply) and jitter_p.p == 0.8
    assert isinstance(jitter, T.ColorJitter)
    # ColorJitter(0.4, 0.4, 0.4, 0.1): factors drawn from [0.6, 1.4], hue from [-0.1, 0.1]
    for rng in (jitter.brightness, jitter.contrast, jitter.saturation):
        assert rng == pytest.approx((0.6, 1.4))
    assert jitter.hue == pytest.approx((-0.1, 0.1))
    assert isinstance(gray, T.RandomGrayscale) and gray.p == 0.2
    rest = ops[5:]
    if blur:
        blur_p, gauss = rest[:2]
        assert isinstance(blur_p, T.RandomApply) and blur_p.p == 0.5
        assert isinstance(gauss, T.GaussianBlur) and gauss.sigma == pytest.approx((0.1, 2.0))
        rest = rest[2:]
    assert not any(isinstance(op, T.GaussianBlur) for op in rest)
    assert [type(op) for op in rest] == [T.ToTensor, T.Normalize]
    assert (tuple(rest[1].mean), tuple(rest[1].std)) == stats


def test_bundles_carry_the_papers_augmentations(cifar_jpeg_root: Path) -> None:
    # CIFAR: classifier crop + flip; SCL views with jitter and grayscale, no blur; plain eval
    b = build_data(spec(cifar_jpeg_root), seed=0)
    _check_classifier(b.train.transform, 32, tf.CIFAR10_STATS)
    _check_contrastive(b.train_contrastive.transform, 32, tf.CIFAR10_STATS, blur=False)
    for plain in (b.train_eval, b.val, b.test):  # metrics and fixed prototypes: un-augmented
        assert not any(isinstance(op, RANDOM_OPS) for op in _ops(plain.transform))
        assert _kinds(plain.transform)[-2:] == [T.ToTensor, T.Normalize]
    # ImageNet-sized inputs (an ImageFolder at 64 px): SCL adds the blur, eval resizes + crops
    big = build_data(DatasetSpec(name="imagefolder", root=str(cifar_jpeg_root), image_size=64), 0)
    _check_classifier(big.train.transform, 64, tf.IMAGENET_STATS)
    _check_contrastive(big.train_contrastive.transform, 64, tf.IMAGENET_STATS, blur=True)
    for plain in (big.train_eval, big.val, big.test):
        assert _kinds(plain.transform) == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
        assert not any(isinstance(op, RANDOM_OPS) for op in _ops(plain.transform))
        assert plain.transform.transforms[0].size == round(64 * 8 / 7)  # 256 -> 224 as ImageNet
    # augment: false trains on the plain images
    off = build_data(spec(cifar_jpeg_root, augment=False), seed=0)
    for data in (off.train, off.train_contrastive):
        assert data.transform is off.train_eval.transform
