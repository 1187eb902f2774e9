"""Downstream evaluations after a trial's last epoch (issue #9): long-tail accuracy when the
training class counts differ, linear transfer to other datasets, corruption errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ncstudy.data.registry import dataset_facts, input_stats
from ncstudy.evaluate.corruptions import corruption_errors
from ncstudy.evaluate.longtail import is_imbalanced, longtail_accuracies, shard_class_counts
from ncstudy.evaluate.ood import trial_ood
from ncstudy.evaluate.transfer import transfer_accuracies
from ncstudy.losses.distributed import distributed_world

if TYPE_CHECKING:
    from ncstudy.config import TrialSpec
    from ncstudy.losses import NCLoss


def downstream_plan(
    trial: TrialSpec, num_classes: int, loaders: dict[str, DataLoader], device: torch.device
) -> tuple[list[int] | None, bool]:
    """(training class counts when the long-tail evaluation applies, whether any downstream
    evaluation runs at the end of the trial)."""
    ev = trial.evaluation
    counts = None
    if ev.longtail.enabled:
        counts = shard_class_counts(loaders["train"], num_classes, device)
        counts = counts if is_imbalanced(counts) else None
    later = (ev.transfer, ev.corruptions, ev.ood)
    return counts, counts is not None or any(x is not None for x in later)


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
    ev = trial.evaluation
    out: dict[str, float] = {}
    if counts is not None:
        test = loaders["test"]
        out.update(longtail_accuracies(encoder, criterion, device, ev.longtail, test, counts))
    test_set = loaders["test"].dataset.dataset  # type: ignore[attr-defined]  # under the Subset
    if ev.transfer is not None:
        out.update(_transfer(encoder, criterion, trial, test_set, device))
    if ev.corruptions is not None:
        out.update(_corruptions(encoder, criterion, trial, test_set, device))
    if ev.ood is not None:  # out-of-distribution accuracy (ncstudy/evaluate/ood.py)
        out.update(trial_ood(encoder, criterion, trial, test_set, device))
    return out


def _transfer(
    encoder: nn.Module, criterion: NCLoss, trial: TrialSpec, test_set: Any, device: torch.device
) -> dict[str, float]:
    """Linear transfer, with the inputs normalised by the training dataset's statistics."""
    ev, name = trial.evaluation, trial.dataset.name
    assert ev.transfer is not None
    stats = input_stats(trial.dataset)
    if stats is None:
        raise ValueError(
            f"evaluation.transfer: {name} has no RGB image statistics to normalise the transfer "
            "datasets with; train on an image dataset (cifar10_jpeg, cifar10, ...)"
        )
    rank, world = distributed_world()
    return transfer_accuracies(
        encoder,
        criterion,
        device,
        ev.transfer,
        image_size=ev.transfer.image_size or int(test_set[0][0].shape[-1]),
        stats=stats,
        rank=rank,
        world_size=world,
        batch_size=ev.eval_batch_size,
        seed=trial.seed,
    )


def _corruptions(
    encoder: nn.Module, criterion: NCLoss, trial: TrialSpec, test_set: Any, device: torch.device
) -> dict[str, float]:
    """Corruption errors of the test set (mCE when its classes are ImageNet-1K's)."""
    ev = trial.evaluation
    rank, world = distributed_world()
    return corruption_errors(
        encoder,
        criterion,
        device,
        ev.corruptions,
        test_set,
        rank,
        world,
        ev.eval_batch_size,
        imagenet=dataset_facts(trial.dataset.name).imagenet_1k,
    )
