"""Where a worker loop runs: a Ray Train worker, a single-worker Tune trial (the fast path), or a
plain process (tests, debugging). The loop only sees this small interface, so all three run
exactly the same code."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ncstudy.checkpoints import (
    CHECKPOINT_FILE,
    Restored,
    progress_of,
    restore_newest,
    write_marker,
)


class WorkerContext:
    """Rank/world size, checkpoint restore and a `report` that every rank calls equally often."""

    def __init__(self) -> None:
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.reports: list[dict[str, Any]] = []
        self.restored_from: str | None = None  # the checkpoint folder load_state restored

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None = None) -> None:
        """Report metrics (all ranks), with a checkpoint of `state` written by rank 0."""
        self.reports.append(metrics)
        if state is not None and self.is_main:
            with _state_dir(state) as path:
                self._report(metrics, path)
        else:
            self._report(metrics, None)

    def load_state(self) -> dict[str, Any] | None:
        """The last reported checkpoint's state dict, or None on a fresh start."""
        raise NotImplementedError

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        raise NotImplementedError

    def _restored(self, found: Restored | None) -> dict[str, Any] | None:
        """The state of a restored checkpoint (None: a fresh start), noting where it came from."""
        self.restored_from = None if found is None else found.source
        return None if found is None else found.state


@contextmanager
def _state_dir(state: dict[str, Any]) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ncstudy-ckpt-"))
    try:
        torch.save(state, path / CHECKPOINT_FILE)
        write_marker(path, progress_of(state))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def load_state_file(path: Path) -> dict[str, Any]:
    """A checkpoint's state dict. `weights_only=True`: tensors, numbers, strings and containers
    only, so a checkpoint in shared storage cannot run code when it is loaded (the states the
    worker loops save are made of nothing else)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class RayTrainContext(WorkerContext):
    """Inside a Ray Train worker (TorchTrainer)."""

    def load_state(self) -> dict[str, Any] | None:
        """The newest complete checkpoint in the Train run's folder (or the one Train hands)."""
        import ray.train  # Ray (seconds): only inside a Ray Train worker

        storage = ray.train.get_context().get_storage()
        found = restore_newest(ray.train.get_checkpoint(), storage, storage.experiment_fs_path)
        return self._restored(found)

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train  # Ray (seconds): only inside a Ray Train worker

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


class TuneContext(WorkerContext):
    """Inside a Ray Tune function trial: the single-worker fast path, no Train start-up."""

    def load_state(self) -> dict[str, Any] | None:
        """The newest complete checkpoint in the trial's folder (or the one Tune hands): after
        a crash of the driver, Tune's saved state may name an older one."""
        import ray.tune  # Ray (seconds): only inside a Tune trial

        storage = ray.tune.get_context().get_storage()
        found = restore_newest(ray.tune.get_checkpoint(), storage, storage.trial_fs_path)
        return self._restored(found)

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.tune  # Ray (seconds): only inside a Tune trial

        ckpt = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=ckpt)


class LocalContext(WorkerContext):
    """A plain process (or a gloo process group): checkpoints go to `checkpoint_dir`."""

    def __init__(self, checkpoint_dir: str | Path | None = None) -> None:
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None

    def load_state(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None or not (self.checkpoint_dir / CHECKPOINT_FILE).exists():
            return None
        return load_state_file(self.checkpoint_dir / CHECKPOINT_FILE)

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None and self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(checkpoint_dir / CHECKPOINT_FILE, self.checkpoint_dir / CHECKPOINT_FILE)
