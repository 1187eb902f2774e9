"""miniImageNet on a generated tiny ImageFolder tree (100 class folders of 12 px PNGs): class
count, splits, transforms; the errors without a root (how to get it) and for a wrong tree; and
the padded-crop augmentation (`dataset.crop: padded`) against a brute-force search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ncstudy.config import DatasetSpec, SpecError, parse_study
from ncstudy.data import build_data
from ncstudy.data import transforms as tf
from ncstudy.data.preflight import check_study_data


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(0)
    for c in range(100):
        for split, n in (("train", 5), ("test", 1)):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_builds_100_classes_with_its_splits(tree: Path) -> None:
    spec = DatasetSpec(
        name="miniimagenet", root=str(tree), image_size=8, crop="padded", val_fraction=0.2
    )
    data = build_data(spec, seed=0)
    assert data.num_classes == 100 and data.input_shape == (3, 8, 8)
    assert len(data.test) == 100
    assert len(data.train) == 400 and len(data.val) == 100  # 1 of 5 per class held out
    x, y = data.train[0]
    assert x.shape == (3, 8, 8) and 0 <= y < 100
    assert data.test[5][0].shape == (3, 8, 8)  # 12 px files resized to the 8 px input


def test_default_size_is_84(tree: Path) -> None:
    data = build_data(DatasetSpec(name="miniimagenet", root=str(tree), val_fraction=0.2), seed=0)
    assert data.input_shape == (3, 84, 84) and data.val[0][0].shape == (3, 84, 84)


def _study(root: str | None) -> dict:
    return {
        "name": "mini",
        "dataset": {"name": "miniimagenet", "root": root},
        "model": {"name": "wide_resnet18"},
        "losses": [{"name": "ce"}],
    }


def test_without_root_the_error_says_how_to_get_it() -> None:
    with pytest.raises(ValueError, match="no download.*Ravi & Larochelle.*84x84"):
        build_data(DatasetSpec(name="miniimagenet"), seed=0)
    with pytest.raises(SpecError, match="dataset.root.*no download"):
        check_study_data(parse_study(_study(None)))
    with pytest.raises(SpecError, match="nowhere does not exist; miniImageNet has no download"):
        check_study_data(parse_study(_study("/nowhere")))


def test_a_tree_with_other_classes_is_refused(tmp_path: Path, tree: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / split / "a" / "x.png")
    with pytest.raises(ValueError, match="1 class folders, miniimagenet has 100"):
        build_data(DatasetSpec(name="miniimagenet", root=str(tmp_path)), seed=0)
    with pytest.raises(SpecError, match="1 class folders, miniimagenet has 100"):
        check_study_data(parse_study(_study(str(tmp_path))))
    check_study_data(parse_study(_study(str(tree))))  # the full tree passes


def test_ffcv_is_refused_for_miniimagenet() -> None:
    with pytest.raises(ValueError, match="no miniimagenet files"):
        DatasetSpec(name="miniimagenet", loader="ffcv", beton_dir="/x")


def test_padded_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    pixels = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3) % 251
    image = Image.fromarray(pixels.astype(np.uint8))
    padded = np.pad(pixels / 255.0, ((2, 2), (2, 2), (0, 0)))  # 16 // 8 = 2 px of zeros
    windows = {}
    for i in range(5):
        for j in range(5):
            w = (padded[i : i + 16, j : j + 16] - 0.5) / 0.25
            windows[(i, j, False)] = w
            windows[(i, j, True)] = w[:, ::-1]
    transform = tf.classifier_transform(16, stats, crop="padded")
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        out = transform(image).permute(1, 2, 0).numpy()
        match = [k for k, w in windows.items() if np.allclose(out, w, atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 5  # random offsets and flips
