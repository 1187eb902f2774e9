"""STL-10 files in torchvision's binary layout (stl10_binary/<split>_X.bin, <split>_y.bin,
class_names.txt: uint8 images of 3 x 96 x 96 stored column-major, labels 1..10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STL10_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)  # fmt: skip


def write_stl10(
    root: Path, n: int, seed: int = 0, split: str = "test", images: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Write `n` images (random, or `images` as (n, 96, 96, 3) HWC) with labels cycling over the
    classes under root/stl10_binary; returns the HWC images and the 0-based labels."""
    rng = np.random.default_rng(seed)
    if images is None:
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
    labels = (np.arange(n) * 3 + seed) % 10
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    # torchvision reads (N, 3, 96, 96) then swaps the last two axes: planes are stored (c, w, h)
    np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tofile(folder / f"{split}_X.bin")
    (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(STL10_CLASSES) + "\n")
    return images, labels
