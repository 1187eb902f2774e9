"""The Ray Train worker entry, in a module that imports nothing heavy.

TorchTrainer pickles its train function by reference, so the Train controller imports the
function's module just to unpickle it. Pointing it here instead of at `ncstudy.train` keeps the
worker loop's imports (models, data, metrics, torchvision) out of the controller: they load
only in the workers, which need them (benchmarks/README.md, Ray Train start-up).
"""

from __future__ import annotations

from typing import Any


def ray_train_entry(config: dict[str, Any]) -> None:
    """TorchTrainer's train_loop_per_worker: ncstudy.train.ray_train_entry, imported here."""
    # the worker loop (torch, torchvision): only in the workers, not the controller
    from ncstudy.train import ray_train_entry as entry

    entry(config)
