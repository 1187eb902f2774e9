"""A minimal STL-10 test split in torchvision's layout (stl10_binary/), for pre-flight checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAMES = "airplane bird car cat deer dog horse monkey ship truck"


def write_stl10_small(root: Path, n: int = 2) -> Path:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    np.zeros((n, 3, 96, 96), np.uint8).tofile(folder / "test_X.bin")
    np.arange(1, n + 1, dtype=np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text(NAMES.replace(" ", "\n"))
    return root
