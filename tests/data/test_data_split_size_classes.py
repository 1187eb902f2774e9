"""The pre-flight's training-split size honours dataset.classes (it counted every class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ncstudy.config import DatasetSpec
from ncstudy.config.errors import SpecError
from ncstudy.data import build_data
from ncstudy.data.split_sizes import train_split_size


@pytest.mark.parametrize(
    "fields",
    [
        {"classes": [3, 0]},
        {"classes": ["7", "2", "5"], "val_fraction": 0.3},
        {"classes": [1, 9], "subset_per_class": 40, "imbalance_ratio": 0.2},
    ],
)
def test_digits_class_subset_counts_as_the_loader_builds_it(fields: dict) -> None:
    spec = DatasetSpec(name="digits", **fields)
    assert train_split_size(spec) == len(build_data(spec, 0).train)


def test_imagefolder_class_names_count_as_the_loader_builds_them(tmp_path: Path) -> None:
    for split, counts in (("train", (9, 7, 12)), ("test", (2, 2, 2))):
        for name, n in zip(("cat", "dog", "emu"), counts, strict=True):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i}.png")
    for val in (0.0, 0.25):
        spec = DatasetSpec(
            name="imagefolder",
            root=str(tmp_path),
            image_size=8,
            classes=["emu", "cat"],
            val_fraction=val,
        )
        size = train_split_size(spec)
        assert size == len(build_data(spec, 0).train)
        assert size == (21 if val == 0 else 16), val  # 12 + 9, less 3 + 2 held out


def test_the_pre_flight_refuses_a_batch_larger_than_the_subset(tmp_path: Path) -> None:
    """Two digits classes hold ~230 training images: batch 512 fits all ten, not these two."""
    from ncstudy.config import load_study
    from ncstudy.data.preflight import check_study_data

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: two_digits\ndataset: {name: digits, classes: [0, 1]}\n"
        "model: {name: small_cnn}\ntrain: {epochs: 1}\nlosses: [{name: ce}]\n"
        "grid: {batch_size: [512], seed: [0]}\n"
    )
    study = load_study(path)
    size = len(build_data(study.dataset, 0).train)
    assert size < 512
    with pytest.raises(SpecError, match=rf"grid.batch_size \(digits\): .* split \({size} images"):
        check_study_data(study)
