"""Downstream evaluations after a trial's last epoch (issue #9): long-tail accuracy when the
training class counts differ, linear transfer to other datasets, corruption errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from ncstudy.losses import NCLoss
    from ncstudy.config import TrialSpec


def downstream_plan(
    trial: TrialSpec, num_classes: int, loaders: dict[str, DataLoader], device: torch.device
) -> tuple[list[int] | None, bool]:
    """(training class counts when the long-tail evaluation applies, whether any downstream
    evaluation runs at the end of the trial)."""
    from ncstudy.evaluate.longtail import is_imbalanced, shard_class_counts

    ev = trial.evaluation
    counts = None
    if ev.longtail.enabled:
        counts = shard_class_counts(loaders["train"], num_classes, device)
        counts = counts if is_imbalanced(counts) else None
    return counts, counts is not None or ev.transfer is not None or ev.corruptions is not None


def evaluate_downstream(
    encoder: nn.Module,
    criterion: NCLoss,
    trial: TrialSpec,
    num_classes: int,
    loaders: dict[str, DataLoader],
    device: torch.device,
    counts: list[int] | None,
) -> dict[str, float]:
    """Downstream evaluations (issue #9), after the last epoch: long-tail accuracy (when the
    training class counts differ), linear transfer, corruption errors."""
    from ncstudy.data import transforms as tf
    from ncstudy.evaluate.corruptions import corruption_errors
    from ncstudy.evaluate.longtail import longtail_accuracies
    from ncstudy.evaluate.transfer import transfer_accuracies

    ev, enc, crit = trial.evaluation, encoder, criterion
    out: dict[str, float] = {}
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if counts is not None:
        out.update(longtail_accuracies(enc, crit, device, ev.longtail, loaders["test"], counts))
    name = trial.dataset.name
    stats = (
        tf.CIFAR100_STATS
        if name.startswith("cifar100")
        else tf.CIFAR10_STATS
        if name.startswith("cifar10")
        else tf.IMAGENET_STATS
    )
    test_set = loaders["test"].dataset.dataset  # type: ignore[attr-defined]  # under the Subset
    if ev.transfer is not None:
        size = ev.transfer.image_size or int(test_set[0][0].shape[-1])
        out.update(
            transfer_accuracies(
                enc,
                crit,
                device,
                ev.transfer,
                image_size=size,
                stats=stats,
                rank=rank,
                world_size=world,
                batch_size=ev.eval_batch_size,
                seed=trial.seed,
            )
        )
    if ev.corruptions is not None:
        out.update(
            corruption_errors(
                enc,
                crit,
                device,
                ev.corruptions,
                test_set,
                rank,
                world,
                ev.eval_batch_size,
                imagenet=name == "imagenet",
            )
        )
    return out
