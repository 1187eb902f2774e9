"""The dataset registry: names in the study YAML map to builder functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

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


_BUILDERS: dict[str, Callable[..., DataBundle]] = {}
_NUM_CLASSES: dict[str, Callable[[Any], int]] = {}


def register_dataset(
    name: str, num_classes: int | Callable[[Any], int]
) -> Callable[[Callable[..., DataBundle]], Callable[..., DataBundle]]:
    """Decorator: register a builder `fn(spec, seed) -> DataBundle` under `name`, with its class
    count (a number, or a function of the DatasetSpec) known without loading any data."""

    def wrap(fn: Callable[..., DataBundle]) -> Callable[..., DataBundle]:
        _BUILDERS[name] = fn
        _NUM_CLASSES[name] = num_classes if callable(num_classes) else (lambda _s: num_classes)
        return fn

    return wrap


def dataset_num_classes(spec: Any) -> int:
    """The number of classes of the dataset a DatasetSpec names, without loading it."""
    _load_builtin()
    return _NUM_CLASSES[spec.name](spec)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    _load_builtin()
    return sorted(_BUILDERS)


def build_data(spec: Any, seed: int) -> DataBundle:
    """Build the dataset named by `spec.name` (a DatasetSpec) with splits drawn from `seed`."""
    _load_builtin()
    if spec.name not in _BUILDERS:
        raise ValueError(f"dataset.name: unknown dataset {spec.name!r}; valid: {list_datasets()}")
    return _BUILDERS[spec.name](spec, seed)


def _load_builtin() -> None:
    # Importing the modules registers their builders; kept lazy so `import ncstudy.data` is cheap.
    from ncstudy.data import cifar, digits, imagefolder  # noqa: F401
