"""The shipped CPU study reads CIFAR-10 through torchvision's download (a fresh machine with
internet has no other copy), with its subset options; the cifar10_jpeg dataset reads only what
the user points it at (dataset.root or NCSTUDY_CIFAR10_ZIP), never a folder outside the
repository. Tests cannot download: torchvision's CIFAR10 class is replaced by one that records
how it was called and serves random images with CIFAR-10's shapes and class sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ncstudy.config import SpecError, load_study, parse_study
from ncstudy.data import build_data
from ncstudy.data.imagefolder import CIFAR10_ZIP_ENV, cifar10_jpeg_root, shared_cifar10_zip
from ncstudy.data.preflight import check_study_data

STUDY = Path(__file__).resolve().parents[2] / "studies" / "cifar10_cpu.yaml"
TRAIN_PER_CLASS, TEST_PER_CLASS = 500, 250  # enough for the study's 300 / 200 per class


class FakeCIFAR10:
    """torchvision.datasets.CIFAR10's interface: (root, train, download) -> .data, .targets,
    .classes; every call is recorded."""

    calls: list[tuple[str, bool, bool]] = []

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        FakeCIFAR10.calls.append((root, train, download))
        n = TRAIN_PER_CLASS if train else TEST_PER_CLASS
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (10 * n, 32, 32, 3), dtype=np.uint8)
        self.targets = list(np.repeat(np.arange(10), n))
        self.classes = [f"class{k}" for k in range(10)]


def test_the_cpu_study_downloads_cifar10_with_its_subset(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from torchvision import datasets

    monkeypatch.setenv("HOME", str(tmp_path))  # a fresh machine: nothing cached
    monkeypatch.setattr(datasets, "CIFAR10", FakeCIFAR10)
    FakeCIFAR10.calls = []
    study = load_study(STUDY)
    assert study.dataset.name == "cifar10" and study.dataset.download is True
    check_study_data(study)  # the pre-flight accepts it: torchvision will download it
    bundle = build_data(study.dataset, seed=0)
    root = str(tmp_path / ".cache" / "ncstudy" / "cifar")
    assert FakeCIFAR10.calls == [(root, True, True), (root, False, True)]
    per_class = study.dataset.subset_per_class
    val = round(study.dataset.val_fraction * per_class)  # stratified: the same in every class
    assert bundle.class_counts == (per_class - val,) * 10
    assert len(bundle.val) == 10 * val
    assert len(bundle.test) == 10 * study.dataset.test_per_class
    x, y = bundle.test[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 10


def test_cifar10_jpeg_needs_a_root_or_the_zip_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no extracted copy in the cache
    monkeypatch.delenv(CIFAR10_ZIP_ENV, raising=False)
    assert shared_cifar10_zip() is None  # no default location outside the repository
    spec = parse_study(
        {"name": "j", "dataset": {"name": "cifar10_jpeg"}, "losses": [{"name": "ce"}]}
    )
    with pytest.raises(SpecError, match=r"dataset.root \(cifar10_jpeg\): not set.*download: true"):
        check_study_data(spec)
    with pytest.raises(FileNotFoundError, match=f"no zip given.*{CIFAR10_ZIP_ENV}"):
        cifar10_jpeg_root(spec.dataset)
    monkeypatch.setenv(CIFAR10_ZIP_ENV, str(tmp_path / "missing.zip"))
    with pytest.raises(FileNotFoundError, match="missing.zip is not a file"):
        cifar10_jpeg_root(spec.dataset)


def test_the_tests_point_at_the_offline_copy_explicitly() -> None:
    # tests/conftest.py sets the variable (unless the caller did): the only way the offline
    # copy reaches ncstudy
    zip_path = shared_cifar10_zip()
    assert zip_path is not None and zip_path.name.endswith(".zip")
