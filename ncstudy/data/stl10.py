"""STL-10 (Coates et al. 2011) as an evaluation set: its labelled `train` (5,000) or `test`
(8,000) split, 96 x 96 RGB, 10 classes named in `class_names.txt`.

Online, `download: true` runs torchvision's `STL10(root, download=True)` (the archive, checked
against its MD5). Offline, `root` holds torchvision's extracted folder `stl10_binary/` with at
least `<split>_X.bin`, `<split>_y.bin` and `class_names.txt`; the files are read here, the way
torchvision reads them (uint8, 3 x 96 x 96 per image stored column-major, labels 1..10), through
a memory map so that a subset reads only its images. torchvision's own reader is not used
offline: it refuses to open any split unless all files, the 2.6 GB unlabelled one included, match
its MD5 sums.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

FOLDER = "stl10_binary"
URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
SIDE = 96
SPLITS = ("train", "test")
# class_names.txt of the archive, in label order
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def stl10_root(root: str | None) -> Path:
    """`root`, or ~/.cache/ncstudy/stl10 (the folder that holds `stl10_binary/`)."""
    return Path(root or Path.home() / ".cache" / "ncstudy" / "stl10").expanduser()


def download_stl10(root: Path) -> None:
    """torchvision's download and extraction of the archive into `root` (skipped when the
    files are there and intact)."""
    from torchvision.datasets import STL10  # torchvision (about 1 s): only when downloading

    STL10(str(root), split="test", download=True)


class STL10Split(Dataset):
    """One labelled split of STL-10: PIL images through `transform`, labels 0..9 (`classes`)."""

    def __init__(self, root: str | Path, split: str, transform: Any = None, field: str = "root"):
        if split not in SPLITS:
            raise ValueError(f"STL-10 split: {split!r}; use one of {SPLITS}")
        folder = Path(root) / FOLDER
        files = [folder / f"{split}_X.bin", folder / f"{split}_y.bin", folder / "class_names.txt"]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{field}: STL-10 is not under {root} (no {folder}/{', '.join(missing)}); set "
                f"download: true where online, or download {URL} and extract it into {root}"
            )
        self.classes = files[2].read_text().split()
        self.targets = np.fromfile(files[1], dtype=np.uint8).astype(np.int64) - 1
        self.images = np.memmap(files[0], dtype=np.uint8, mode="r").reshape(-1, 3, SIDE, SIDE)
        if len(self.images) != len(self.targets) or len(self.classes) != 10:
            raise ValueError(
                f"{field}: {folder} holds {len(self.images)} images, {len(self.targets)} labels "
                f"and {len(self.classes)} class names (STL-10: as many labels as images, 10 "
                "classes); download it again"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> Image.Image:
        """Image `i` as torchvision returns it (the stored planes transposed: column-major)."""
        return Image.fromarray(np.ascontiguousarray(self.images[i].transpose(2, 1, 0)))

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image = self.load(i)
        return (image if self.transform is None else self.transform(image)), int(self.targets[i])


def load_stl10(
    root: str | None, split: str, download: bool, transform: Any = None, field: str = "root"
) -> STL10Split:
    """STL-10's `split` under `root` (downloaded first when `download`); `field` names the
    YAML field in errors."""
    path = stl10_root(root)
    if download:
        download_stl10(path)
    return STL10Split(path, split, transform, field)
