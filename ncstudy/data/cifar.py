"""CIFAR-10 and CIFAR-100 from torchvision's python-pickle files, and their long-tailed versions
(CIFAR-10/100-LT: `imbalance_ratio`, seeded subset, balanced test set).

Online users set `download: true`; offline, put the extracted `cifar-10-batches-py/` (or
`cifar-100-python/`) under `dataset.root` (default ~/.cache/ncstudy/cifar).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torchvision import datasets

from ncstudy.data.bundle import DataBundle
from ncstudy.data.images import ImageSource, make_bundle
from ncstudy.data.registry import input_stats

ARCHIVES = {
    "cifar10": ("cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def cifar_root(spec: Any) -> Path:
    """`dataset.root`, or ~/.cache/ncstudy/cifar."""
    return Path(spec.root or Path.home() / ".cache" / "ncstudy" / "cifar").expanduser()


def load_cifar(which: str, root: Path, download: bool) -> tuple[ImageSource, ImageSource]:
    """The official train and test sets of `which` ("cifar10" | "cifar100") as uint8 arrays."""
    cls = datasets.CIFAR10 if which == "cifar10" else datasets.CIFAR100
    folder, url = ARCHIVES[which]
    if not download and not (root / folder).is_dir():
        raise FileNotFoundError(
            f"dataset.root: {which} not found: expected {root / folder}/. Either set "
            f"dataset.download: true (needs internet) or download {url} and extract it into "
            f"{root} (or point dataset.root at the folder that holds {folder}/)"
        )
    try:
        parts = [cls(str(root), train=t, download=download) for t in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"dataset.root: {root / folder} is incomplete or corrupted ({err}); delete it and "
            f"set dataset.download: true, or extract {url} there again"
        ) from None
    classes = list(parts[0].classes)
    return tuple(  # type: ignore[return-value]
        ImageSource(np.asarray(p.data), np.asarray(p.targets, dtype=np.int64), classes)
        for p in parts
    )


def _builder(name: str, which: str) -> Callable[[Any, int], DataBundle]:
    def build(spec: Any, seed: int) -> DataBundle:
        train, test = load_cifar(which, cifar_root(spec), spec.download)
        size = spec.image_size or 32
        resize = None if size == 32 else size  # other sizes: resize the 32 px images for eval
        stats = input_stats(spec)
        assert stats is not None  # the registry gives every CIFAR its statistics
        return make_bundle(spec, train, test, stats, size, resize, which)

    build.__doc__ = f"{name}: torchvision's {which}, val held out of train, official test."
    return build


# name -> builder (the names and facts: ncstudy.data.registry)
BUILDERS = {
    name: _builder(name, which)
    for name, which in [
        ("cifar10", "cifar10"),
        ("cifar100", "cifar100"),
        ("cifar10_lt", "cifar10"),
        ("cifar100_lt", "cifar100"),
    ]
}
