"""Test-wide setup: the offline CIFAR-10 JPEG copy (a zip in ImageFolder layout) that the data,
training and evaluation tests read. ncstudy itself ships no data and never looks outside the
repository for it: the tests point NCSTUDY_CIFAR10_ZIP at the copy next to the repository
(`../shared/data/cifar10-jpeg.zip`) unless the variable is already set; tests that need it
skip when the file is missing."""

from __future__ import annotations

import os
from pathlib import Path

from ncstudy.data.imagefolder import CIFAR10_ZIP_ENV

OFFLINE_CIFAR10_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def pytest_configure(config: object) -> None:
    """Point NCSTUDY_CIFAR10_ZIP at the offline copy (Ray workers inherit it)."""
    os.environ.setdefault(CIFAR10_ZIP_ENV, str(OFFLINE_CIFAR10_ZIP))
