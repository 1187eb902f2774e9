"""The FFCV training loader: reads a `.beton` written by `data_prep.write_beton` and yields the
same batches, semantically, as the torch DataLoader + DistributedSampler path.

Order: exactly DistributedSampler's (shuffle, `seed`, `set_epoch`, padding), applied to the
training indices, so both paths see the same labels in the same order on every rank.
Augmentation: crops are drawn from the whole stored image at decode time by FFCV's JIT-compiled
RandomResizedCrop (scale 0.2-1), then a horizontal flip, as the torchvision path crops the full
PIL image. SCL decodes each image once per view (each view its own random crop and flip, as
`MultiView` does) and applies the colour part of the view augmentation (`transforms.colour_ops`:
jitter, grayscale, blur on ImageNet) to the whole batch at once with per-image random draws
(`colour_batch`; FFCV 1.0.2 has no hue jitter, grayscale or blur). FFCV's own random numbers
come from numba and are not seeded.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from ncstudy.data import transforms as tf
from ncstudy.data.colour_batch import BatchColourAugment

BETON_NAMES = {  # dataset name -> the file stem its DataBundle reads (and data_prep writes)
    "cifar10": "cifar10",
    "cifar10_lt": "cifar10",
    "cifar100": "cifar100",
    "cifar100_lt": "cifar100",
    "cifar10_jpeg": "cifar10_jpeg",
    "cifar10_jpeg_lt": "cifar10_jpeg",
    "imagefolder": "imagefolder",
    "imagenet": "imagenet",
    "imagenet100": "imagenet100",
}
INSTALL_HINT = (
    "install the extra: apt-get install pkg-config libturbojpeg0-dev libopencv-dev, then "
    "pip install 'ncstudy[ffcv]'; or set dataset.loader: torchvision"
)


def beton_path(beton_dir: str | Path, stem: str, split: str = "train") -> Path:
    """`<beton_dir>/<stem>_<split>.beton`: data_prep writes a split there, the loader reads it."""
    return Path(beton_dir).expanduser() / f"{stem}_{split}.beton"


def ffcv_installed() -> bool:
    """Whether the `ffcv` package is installed (cheap: does not import it)."""
    return importlib.util.find_spec("ffcv") is not None


def require_ffcv(import_it: bool = True) -> None:
    """Raise a ValueError naming `dataset.loader` and the fix when FFCV is missing; with
    `import_it` also import it (which fails when its system libraries are missing)."""
    if not ffcv_installed():
        raise ValueError(f"loader: ffcv is not installed; {INSTALL_HINT}")
    if import_it:
        try:
            import ffcv  # noqa: F401  (optional extra, seconds to import: only when asked)
        except ImportError as err:
            raise ValueError(f"loader: ffcv does not import ({err}); {INSTALL_HINT}") from None


class DistributedOrder:
    """FFCV traversal order equal to torch's DistributedSampler over `indices` (no process group
    needed: rank and world size are given)."""

    def __init__(self, indices: np.ndarray, rank: int, world_size: int, seed: int):
        self.indices = np.asarray(indices, dtype=np.uint64)
        self.sampler = DistributedSampler(
            range(len(indices)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )

    def sample_order(self, epoch: int) -> np.ndarray:
        """The beton indices this rank reads in `epoch`."""
        self.sampler.set_epoch(epoch)
        return self.indices[np.fromiter(iter(self.sampler), dtype=np.int64)]


class FFCVTrainLoader:
    """Per-rank training batches from a `.beton`: `(x, y)` with x normalised float32
    (B, C, H, W), or (B, V, C, H, W) when `views` > 1; `set_epoch` as DistributedSampler."""

    def __init__(
        self,
        beton: Path,
        indices: np.ndarray,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        size: int,
        stats: tf.Stats,
        augment: bool,
        views: int = 1,
        num_workers: int = 0,
    ):
        require_ffcv()
        # ffcv: an optional extra, and its import (numba) takes seconds
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToTensor

        if not Path(beton).is_file():
            raise FileNotFoundError(
                f"dataset.beton_dir: {beton} does not exist; write it with "
                f"`python -m data_prep.write_beton --out {Path(beton).parent}`"
            )
        self.stats, self.views, self.batch_size = stats, views, batch_size
        self.colour = None
        if augment and views > 1:  # colour_ops(size), batched: each view its own draws
            self.colour = BatchColourAugment(blur_kernel=tf.scl_blur_kernel(size))
        pipelines = _image_pipelines(size, augment, views)
        self.view_names = list(pipelines)
        self.loader = Loader(
            str(beton),
            batch_size=batch_size,
            num_workers=max(1, num_workers),
            order=OrderOption.SEQUENTIAL,
            indices=np.asarray(indices),
            pipelines={**pipelines, "label": [IntDecoder(), ToTensor(), Squeeze(1)]},
            drop_last=True,
        )
        outputs = list(self.loader.pipeline_specs)  # the order of each batch's tuple
        self.view_slots = [outputs.index(n) for n in self.view_names]
        self.label_slot = outputs.index("label")
        # FFCV 1.0.2 cannot take a custom order class (its isinstance check is inverted):
        # swap in the DistributedSampler order after construction.
        self.order = DistributedOrder(indices, rank, world_size, seed)
        self.loader.traversal_order = self.order
        self.loader.first_traversal_order = self.order.sample_order(0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Pick the shuffle of `epoch` (DistributedSampler semantics)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader.first_traversal_order) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loader.next_epoch = self.epoch
        for batch in self.loader:
            labels = batch[self.label_slot].to(torch.int64, copy=True)  # FFCV reuses buffers
            if self.views == 1:
                yield tf.normalize_batch(batch[self.view_slots[0]], self.stats), labels
                continue
            if len(self.view_slots) == 1:  # not augmented: the same plain image in every view
                views = [batch[self.view_slots[0]]] * self.views
            else:
                views = [batch[k] for k in self.view_slots]
            x = torch.stack(views, dim=1)  # (B, V, C, H, W) uint8, a copy of FFCV's buffers
            flat = x.flatten(0, 1)
            if self.colour is not None:
                flat = self.colour(flat)  # float, 0-255
            yield tf.normalize_batch(flat, self.stats).unflatten(0, x.shape[:2]), labels


def _image_pipelines(size: int, augment: bool, views: int) -> dict[str, Any]:
    """FFCV pipelines of the image field: one per view, each decoding the whole stored image
    into its own random resized crop and flip; or one plain centre crop (`augment` off)."""
    # ffcv: an optional extra, and its import (numba) takes seconds
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.pipeline import PipelineSpec
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    if not augment:  # as eval_transform: ImageNet-sized inputs are centre-cropped 224/256
        ratio = 224 / 256 if size >= 64 else 1.0
        plain = [CenterCropRGBImageDecoder((size, size), ratio=ratio), ToTensor(), ToTorchImage()]
        return {"image": plain}
    names = ["image"] + [f"image_view{v}" for v in range(1, views)]
    return {
        name: PipelineSpec(
            "image",
            decoder=RandomResizedCropRGBImageDecoder((size, size), scale=tf.CROP_SCALE),
            transforms=[RandomHorizontalFlip(), ToTensor(), ToTorchImage()],
        )
        for name in names
    }


class FFCVTrainLoaderFactory:
    """`DataBundle.train_loader`: binds a beton and the training indices; called by the worker
    loop with its rank, world size, per-rank batch, seed and number of views."""

    def __init__(
        self,
        beton: Path,
        indices: np.ndarray,
        size: int,
        stats: tf.Stats,
        augment: bool,
        num_workers: int = 0,
    ):
        self.beton, self.indices, self.size, self.stats = beton, indices, size, stats
        self.augment, self.num_workers = augment, num_workers

    def __call__(
        self, rank: int, world_size: int, batch_size: int, seed: int, views: int = 1
    ) -> FFCVTrainLoader:
        return FFCVTrainLoader(
            self.beton,
            self.indices,
            rank,
            world_size,
            batch_size,
            seed,
            self.size,
            self.stats,
            self.augment,
            views,
            self.num_workers,
        )
