"""Corruption robustness (Hendrycks & Dietterich 2019): 15 corruptions x 5 severities.

Corrupted test sets are read from an ImageNet-C folder (`<root>/<corruption>/<severity>/<class>/*`)
or generated on the fly from the trial's test set (CIFAR-10-C style) with the `imagecorruptions`
package (1.1.2, the reference functions of the benchmark). As in ImageNet-C, the image is first
brought to the network's input size (the test set's resize and centre crop: 256 -> 224 on
ImageNet), then corrupted, then converted and normalised. Errors are fractions; mCE (ImageNet,
all 15 corruptions x 5 severities only, as AlexNet's errors are) divides each corruption's error
(mean over severities) by AlexNet's and averages.
"""

from __future__ import annotations

import importlib.resources
import sys
import types
import warnings
import zlib
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from ncstudy.config import CORRUPTIONS
from ncstudy.evaluate.passes import accuracy, shard_loader

# AlexNet's corruption errors on ImageNet-C (fraction, mean over the 5 severities), in the order of
# CORRUPTIONS. Source: Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
# Corruptions and Perturbations", ICLR 2019, via https://github.com/hendrycks/robustness (the
# values every mCE implementation normalises with, e.g. google-research/augmix imagenet.py).
ALEXNET_ERR: dict[str, float] = dict(
    zip(
        CORRUPTIONS,
        (
            0.886428,
            0.894468,
            0.922640,
            0.819880,
            0.826268,
            0.785948,
            0.798360,
            0.866816,
            0.826572,
            0.819324,
            0.564592,
            0.853204,
            0.646056,
            0.717840,
            0.606500,
        ),  # fmt: skip
        strict=True,
    )
)


class _NumpyCompat(types.ModuleType):
    """numpy for the corruption module, with `float_` (removed in numpy 2, used by fog)."""

    float_ = np.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _gaussian(image: np.ndarray, sigma: float, multichannel: bool = False, **kw: Any) -> Any:
    from skimage.filters import gaussian  # scikit-image (seconds): only when corrupting

    return gaussian(image, sigma=sigma, channel_axis=-1 if multichannel else None, **kw)


def _random_noise(image: np.ndarray, **kw: Any) -> Any:
    """skimage's random_noise seeded from the global numpy RNG (it draws from its own)."""
    from skimage.util import random_noise  # scikit-image (seconds): only when corrupting

    return random_noise(image, rng=np.random.randint(2**31), **kw)


class _SkimageCompat(types.ModuleType):
    """skimage for the corruption module: `util.random_noise` made reproducible."""

    util = types.SimpleNamespace(random_noise=_random_noise)

    def __getattr__(self, name: str) -> Any:
        import skimage  # scikit-image (seconds): only when corrupting

        return getattr(skimage, name)


def _resource_filename(package: str, name: str) -> str:
    # the module passes its own __name__ (not a package): resolve against its package
    return str(importlib.resources.files(package.rsplit(".", 1)[0]) / name)


@cache
def _corruption_module() -> Any:
    """`imagecorruptions.corruptions`, patched for numpy 2 / scikit-image >= 0.19 / no setuptools
    (module-local: pkg_resources.resource_filename, gaussian(multichannel=), np.float_),
    and seeded: impulse noise draws from the global numpy RNG like the others."""
    shim = types.ModuleType("pkg_resources")
    shim.resource_filename = _resource_filename  # type: ignore[attr-defined]
    had = sys.modules.get("pkg_resources")
    sys.modules["pkg_resources"] = shim
    try:
        # imported here, under the pkg_resources shim (and only when corrupting: it is heavy)
        from imagecorruptions import corruptions as mod
    finally:
        if had is None:
            sys.modules.pop("pkg_resources", None)
        else:
            sys.modules["pkg_resources"] = had
    mod.resource_filename = _resource_filename
    mod.gaussian = _gaussian
    mod.np = _NumpyCompat("numpy")
    mod.sk = _SkimageCompat("skimage")
    return mod


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One corrupted copy of an (H, W, 3) uint8 image; deterministic for a seed (the global
    numpy RNG the functions draw from is restored afterwards)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"corruptions: unknown corruption {name!r}; valid: {CORRUPTIONS}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severities: {severity} is not in 1..5")
    fn = getattr(_corruption_module(), name)
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        out = fn(Image.fromarray(image), severity)
    finally:
        np.random.set_state(state)
    out = np.uint8(np.clip(np.asarray(out), 0, 255))
    if out.shape != image.shape:  # some functions return (H, W) or crop; keep the input shape
        out = np.asarray(Image.fromarray(out).convert("RGB").resize(image.shape[1::-1]))
    return out


class CorruptedDataset(Dataset):
    """A test ImageDataset (with `load(i)` and `transform`) with each image corrupted at the
    network's input size: the transform's PIL stage (resize, centre crop), the corruption, then
    its tensor stage (to tensor, normalise), as ImageNet-C corrupts the 224 px centre crops."""

    def __init__(
        self,
        base: Any,
        indices: np.ndarray,
        name: str,
        severity: int,
        seed: int,
        stages: tuple[Any, Any] | None = None,
    ):
        """`stages`: `corruption_stages(base)`, when the caller computed it once for several
        corruptions and severities of the same `base`; None computes it here."""
        self.resize_crop, self.to_tensor = corruption_stages(base) if stages is None else stages
        self.base, self.indices = base, np.asarray(indices)
        self.name, self.severity, self.seed = name, severity, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        image = np.asarray(self.resize_crop(self.base.load(j).convert("RGB")))
        seed = zlib.crc32(f"{self.seed}/{self.name}/{self.severity}/{j}".encode())
        img = Image.fromarray(corrupt_image(image, self.name, self.severity, seed))
        return self.to_tensor(img), int(self.base.targets[j])


def corruption_stages(base: Any) -> tuple[Any, Any]:
    """(PIL stage, tensor stage) of a test ImageDataset's transform, the stages that
    CorruptedDataset corrupts between; raises for a test set without raw images."""
    if not (hasattr(base, "load") and hasattr(base, "transform")):
        raise ValueError(
            "evaluation.corruptions: the test set has no raw images (digits); use an "
            "image dataset (cifar10, cifar10_jpeg, imagefolder, ...)"
        )
    return split_at_tensor(base.transform)


def split_at_tensor(transform: Any) -> tuple[Any, Any]:
    """(PIL stage, tensor stage) of a torchvision Compose: the ops before and from ToTensor."""
    from torchvision import transforms as T  # torchvision (about 1 s): not for the report

    ops = list(getattr(transform, "transforms", []))
    cut = next((k for k, op in enumerate(ops) if isinstance(op, T.ToTensor)), None)
    if cut is None:
        raise ValueError(
            "evaluation.corruptions: the test transform has no ToTensor step to corrupt before; "
            "corruptions need an image dataset with the standard eval transform"
        )
    return T.Compose(ops[:cut]), T.Compose(ops[cut:])


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """`k` evenly spaced indices of `range(n)` (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def imagenet_c_dataset(
    root: str | Path, name: str, severity: int, transform: Any, classes: list[str] | None = None
) -> Dataset:
    """The ImageNet-C images of one corruption and severity (`<root>/<name>/<severity>/`); with
    `classes` (the training classes, in label order) the folder's classes must be the same."""
    # torchvision (about 1 s) with them: the report imports this module for ALEXNET_ERR
    from ncstudy.data.imagefolder import scan_imagefolder
    from ncstudy.data.images import ImageDataset

    folder = Path(root).expanduser() / name / str(severity)
    source = scan_imagefolder(folder)
    if classes is not None:
        check_same_classes(source.classes, list(classes), folder)
    return ImageDataset(source, np.arange(len(source.labels)), transform)


def imagenet_c_transform(test_transform: Any) -> Any:
    """ImageNet-C images are stored at the input size (224 px crops): no resize, only the centre
    crop (a no-op at that size) and the tensor stage, as Hendrycks & Dietterich evaluate."""
    from torchvision import transforms as T  # torchvision (about 1 s): not for the report

    pil_stage, tensor_stage = split_at_tensor(test_transform)
    crops = [op for op in pil_stage.transforms if isinstance(op, T.CenterCrop)]
    return T.Compose([*crops, *tensor_stage.transforms])


def check_same_classes(found: list[str], expected: list[str], folder: Path) -> None:
    """ImageNet-C labels are folder positions: they mean the training labels only when the
    class folders are the same (ImageNet-C uses the 1,000 ImageNet wnids)."""
    if found == expected:
        return
    missing = sorted(set(expected) - set(found))[:3]
    extra = sorted(set(found) - set(expected))[:3]
    raise ValueError(
        f"evaluation.corruptions.imagenet_c_root: {folder} has {len(found)} class folders, the "
        f"training set {len(expected)} (missing e.g. {missing}, extra e.g. {extra}); ImageNet-C "
        "labels must be the training classes: train on ImageNet-1K (class folders = wnids) or "
        "remove imagenet_c_root to generate the corruptions from this test set"
    )


def is_full_benchmark(spec: Any) -> bool:
    """Whether a CorruptionSpec asks for all 15 corruptions at all 5 severities (mCE needs it)."""
    return set(spec.corruptions) == set(CORRUPTIONS) and set(spec.severities) == {1, 2, 3, 4, 5}


def mean_corruption_error(errors: dict[str, float], baseline: dict[str, float]) -> float:
    """mCE: the mean over corruptions of error / baseline error (Hendrycks & Dietterich)."""
    missing = [c for c in errors if c not in baseline]
    if missing:
        raise ValueError(f"no baseline error for {missing}")
    return float(np.mean([errors[c] / baseline[c] for c in errors]))


def corruption_errors(
    encoder: nn.Module,
    criterion: Any,
    device: torch.device,
    spec: Any,
    test_set: Dataset,
    rank: int,
    world_size: int,
    batch_size: int,
    imagenet: bool,
) -> dict[str, float]:
    """Error of the loss's prediction rule per corruption and severity, their means, and mCE
    (ImageNet with the full 15 x 5 benchmark only: AlexNet's errors average all of it). Each
    rank scores its shard; counts are all-reduced (every rank runs the same collective calls
    in the same order)."""
    out: dict[str, float] = {}
    indices = evenly_spaced(len(test_set), spec.max_images)  # type: ignore[arg-type]
    classes = getattr(getattr(test_set, "source", None), "classes", None)
    # The same for every corruption and severity: derived from the test transform once.
    c_transform, stages = None, None
    if spec.imagenet_c_root is not None:
        c_transform = imagenet_c_transform(test_set.transform)
    else:
        stages = corruption_stages(test_set)
    for name in spec.corruptions:
        errs = []
        for s in spec.severities:
            if spec.imagenet_c_root is not None:
                data = imagenet_c_dataset(spec.imagenet_c_root, name, s, c_transform, classes)
                data = torch.utils.data.Subset(data, evenly_spaced(len(data), spec.max_images))
            else:
                data = CorruptedDataset(test_set, indices, name, s, spec.seed, stages)
            err = 1.0 - accuracy(
                encoder, criterion, shard_loader(data, rank, world_size, batch_size), device
            )
            out[f"corruption/{name}/s{s}/err"] = err
            errs.append(err)
        out[f"corruption/{name}/err"] = float(np.mean(errs))
    per = {c: out[f"corruption/{c}/err"] for c in spec.corruptions}
    out["corruption/mean_err"] = float(np.mean(list(per.values())))
    if imagenet and is_full_benchmark(spec):
        out["corruption/mce"] = mean_corruption_error(per, ALEXNET_ERR)
    elif imagenet:
        warnings.warn(
            f"corruption/mce not logged: mCE normalises by AlexNet's errors over all 15 "
            f"corruptions x 5 severities, this study evaluates {len(spec.corruptions)} x "
            f"{len(spec.severities)}; corruption/mean_err is the unnormalised mean",
            RuntimeWarning,
            stacklevel=2,
        )
    return out
