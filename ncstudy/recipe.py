"""Training-recipe pieces the worker loop hooks in with a line each: the multi-step learning-rate
schedule by fractions of training, gradient-norm clipping, and the test accuracy of the
best-validation model (Zhou et al. 2022, "Are All Losses Created Equal": lr 0.1 decayed x0.1 at
3/7 and 5/7 of the iterations, gradients clipped at norm 2, test accuracy of the checkpoint with
the best accuracy on a 10 % validation split).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Logged each epoch once a validation accuracy exists (evaluation.test_at_best_val): the test
# accuracy of the model at the epoch of the best validation accuracy so far, and that epoch.
TEST_AT_BEST_VAL = "test/acc1_at_best_val"
BEST_VAL_EPOCH = "best/val_epoch"


def milestone_steps(fractions: Sequence[float], total_steps: int) -> list[int]:
    """The optimiser steps at which the multi-step schedule decays: round(f * total) for each
    fraction f of the whole training (the paper's "3/7 and 5/7 of the total iterations")."""
    return [int(round(f * total_steps)) for f in fractions]


def multistep_factor(
    warmup_steps: int,
    start_factor: float,
    milestones: Sequence[int],
    gamma: float,
) -> Callable[[int], float]:
    """Multiplier of the lr at optimiser step s: linear warmup from `start_factor` over
    `warmup_steps`, then gamma ** (number of milestones reached, s >= m)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start_factor + (1 - start_factor) * step / warmup_steps
        return gamma ** bisect.bisect_right(milestones, step)

    return factor


def schedule_factor(train: Any, steps_per_epoch: int) -> Callable[[int], float] | None:
    """The multi-step schedule of a TrainSpec (`lr_schedule: multistep`), or None for the
    default warmup + cosine schedule, which the worker loop builds itself."""
    if train.lr_schedule != "multistep":
        return None
    total = train.epochs * steps_per_epoch
    warmup = int(round(train.warmup_epochs * steps_per_epoch))
    milestones = milestone_steps(train.lr_milestones, total)
    return multistep_factor(warmup, train.warmup_start_factor, milestones, train.lr_gamma)


def clip_gradients(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    max_norm: float | None,
) -> float | None:
    """Clip the global gradient norm (all parameters together) to `max_norm` before the step;
    returns the norm before clipping, None when clipping is off. Under AMP the gradients are
    unscaled first so that the threshold applies to the true gradients."""
    if max_norm is None:
        return None
    if scaler.is_enabled():
        scaler.unscale_(optimizer)
    norm = nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    return float(norm)


@dataclass
class BestVal:
    """The test accuracy at the epoch of the best validation accuracy (the paper's model
    selection), carried in the checkpoint."""

    test: float | None = None
    epoch: int = 0


def track_best_val(
    best: BestVal,
    previous_best: float,
    metrics: dict[str, Any],
    test_accuracy: Callable[[], float],
) -> None:
    """After an epoch whose `val/acc1` is in `metrics`: when it beats `previous_best` (ties keep
    the earlier epoch), record the epoch and its test accuracy (`test/acc1` when the epoch was
    evaluated, else `test_accuracy()`); then add both to `metrics`."""
    val = metrics.get("val/acc1")
    if val is None:
        return
    if val > previous_best:
        test = metrics.get("test/acc1")
        best.test = float(test_accuracy() if test is None else test)
        best.epoch = int(metrics["epoch"])
    if best.test is not None and math.isfinite(best.test):
        metrics[TEST_AT_BEST_VAL] = best.test
        metrics[BEST_VAL_EPOCH] = best.epoch
