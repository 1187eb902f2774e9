"""The convergence clock's own pass: the tracked NC metrics of a fixed, seeded subset of the
training set, every `evaluation.convergence.every_steps` training iterations.

The source paper's Table 7 counts iterations, so the clock must not depend on how often the full
metrics pass runs (`evaluation.every`). This pass is cheap (a forward pass over
`evaluation.convergence.subset_size` un-augmented training samples, held in memory, and the
metrics of spec/metrics.md computed directly from their features), logs `clock/<metric>` at the
iteration as MLflow step, and feeds the history that `steps_to_95` reads. It draws no random
numbers and leaves the network's train/eval modes as it found them, so training is the same with
or without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from ncstudy.metrics._linalg import safe_normalize
from ncstudy.metrics.clock_metrics import clock_metrics
from ncstudy.metrics.convergence import CLOCK_PREFIX, NETWORK_CLOCK_METRICS, record_history


def clock_indices(size: int, subset_size: int, seed: int) -> np.ndarray:
    """The subset: min(subset_size, size) distinct sample indices drawn with `seed`, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(size, size=min(subset_size, size), replace=False))


class ClockPass:
    """The clock pass of one worker: its shard of the subset (rank::world_size), measured on
    every rank (the features are gathered, so every rank records the same history)."""

    def __init__(
        self,
        trial: Any,
        core: Any,
        dataset: Dataset,
        num_classes: int,
        device: torch.device,
        history: dict[str, list[tuple[int, float]]],
        log: Callable[[dict[str, float], int], None],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        spec = trial.evaluation.convergence
        self.every, self.core, self.device = spec.every_steps, core, device
        self.num_classes, self.history, self.log = num_classes, history, log
        self.batch_size = trial.evaluation.eval_batch_size
        self.max_intra_classes = trial.evaluation.max_intra_classes
        indices = clock_indices(len(dataset), spec.subset_size, trial.seed)  # type: ignore[arg-type]
        samples = [dataset[int(i)] for i in indices[rank::world_size]]
        self.x = torch.stack([s[0] for s in samples]) if samples else None
        self.y = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)

    def after_step(self, step: int) -> None:
        """Measure when `step` (optimiser steps done) is a multiple of `every_steps`."""
        if step % self.every == 0:
            self.measure(step)

    def measure(self, step: int) -> dict[str, float]:
        """The tracked metrics now: appended to the history and logged as `clock/<name>`."""
        features, labels = self._features()
        crit = self.core.criterion
        if crit.needs_class_means:  # fixed prototypes: the class means of the same features
            weights = _unit_class_means(features, labels, self.num_classes)
        else:
            weights = crit.classifier_weights()
        values = clock_metrics(features, labels, self.num_classes, weights, self.max_intra_classes)
        metrics = {f"{CLOCK_PREFIX}{k}": v for k, v in values.items()}
        record_history(self.history, metrics, step, NETWORK_CLOCK_METRICS, CLOCK_PREFIX)
        self.log(metrics, step)
        return metrics

    @torch.no_grad()
    def _features(self) -> tuple[Tensor, Tensor]:
        """embed() outputs and labels of the whole subset (every rank's shard, gathered)."""
        modes = [(m, m.training) for m in self.core.modules()]
        self.core.eval()
        parts = []
        try:
            if self.x is not None:
                for start in range(0, len(self.x), self.batch_size):
                    x = self.x[start : start + self.batch_size].to(self.device)
                    h = self.core.encoder(x)
                    parts.append(self.core.criterion.embed(h).float())
        finally:
            for module, training in modes:
                module.training = training
        local = (torch.cat(parts).cpu(), self.y) if parts else None
        gathered: list[Any] = [local]
        if dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        got = [g for g in gathered if g is not None]
        if not got:
            raise ValueError("the clock pass saw no data: the training set is empty")
        return torch.cat([g[0] for g in got]).to(self.device), torch.cat([g[1] for g in got])


def _unit_class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Normalised class means of the normalised features (the SCL fp prototypes' rule); a
    class without samples gets a zero row."""
    units = safe_normalize(features.double())
    sums = torch.zeros(num_classes, units.shape[1], dtype=units.dtype, device=units.device)
    sums.index_add_(0, labels.to(units.device), units)
    return safe_normalize(sums)


def clock_for_worker(w: Any, history: dict[str, list[tuple[int, float]]], log: Any) -> Any:
    """The clock pass of a trainer's Worker (None when the trial computes no NC metrics);
    `history` is the trial's (checkpointed) clock history, `log` its RunLogger."""
    if not w.trial.evaluation.nc_metrics:
        return None
    return ClockPass(
        w.trial,
        w.core,
        w.data.train_eval,
        w.data.num_classes,
        w.device,
        history,
        log.log,
        w.ctx.rank,
        w.ctx.world_size,
    )
