"""What a dataset builder returns: deterministic splits and the metadata the trainer needs."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DataBundle:
    """Deterministic splits of one dataset. `train` yields augmented samples when the study asks
    for augmentation; `train_eval` is the same training set un-augmented (metrics, prototypes)."""

    train: Dataset
    train_eval: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_counts: tuple[int, ...]
    # The SCL view augmentation of `train` (colour jitter, grayscale, ...); None: use `train`.
    train_contrastive: Dataset | None = None
    # `fn(rank, world_size, per_rank_batch, seed, views)` -> a loader with `set_epoch(epoch)`
    # and `len()`, yielding (x, y) batches (x of shape (B, V, C, H, W) when views > 1); set when
    # the study picks `loader: ffcv`; None: the trainer builds a torch DataLoader over `train`.
    train_loader: Callable[[int, int, int, int, int], Iterable] | None = None
