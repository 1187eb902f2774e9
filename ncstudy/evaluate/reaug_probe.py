"""The standard linear-probe protocol (Khosla et al. 2020; the source paper's "Standard LP",
Table 14): the probe trains on freshly augmented views of the training set, passed through the
frozen encoder every epoch, instead of on cached un-augmented features (ncstudy.evaluate.probes,
the paper's "Cached LP"). Same probe, optimiser, schedule and sample order as the cached probe
(`train_linear_probe`): with an augmentation that changes nothing the two are the same probe.
Under DDP every rank loads its part of each global batch and the probe's gradient is summed
over the ranks, so all ranks hold the same probe (that of one process on the whole batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ncstudy.evaluate.passes import gather_features
from ncstudy.evaluate.probes import LinearProbe, probe_accuracy
from ncstudy.losses.distributed import distributed_world


def epoch_batches(order: torch.Tensor, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This rank's part (every world-th sample) of each global batch of `order`; a last global
    batch smaller than the world is dropped (every rank needs a sample in every batch)."""
    return [
        order[start : start + batch_size][rank::world].tolist()
        for start in range(0, len(order), batch_size)
        if len(order) - start >= world
    ]


def _views(
    encoder: nn.Module, loader: DataLoader, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(frozen features, labels) of each batch of freshly augmented views."""
    for x, y in loader:
        with torch.no_grad():  # not around the yield: the probe's step needs its gradient
            h = encoder(x.to(device, non_blocking=True)).float()
        yield h, y.to(device)


def train_reaugmented_probe(
    encoder: nn.Module,
    train_set: Dataset,
    num_classes: int,
    spec: Any,
    seed: int,
    device: torch.device,
    num_workers: int = 0,
) -> LinearProbe:
    """An lp probe trained for `spec.epochs` epochs (ProbeSpec) on augmented views of
    `train_set` (its own augmentation) through the frozen, eval-mode `encoder`."""
    rank, world = distributed_world()
    encoder.eval()
    with torch.no_grad():  # the feature size, from one view
        dim = encoder(train_set[0][0].unsqueeze(0).to(device)).shape[1]
    gen = torch.Generator().manual_seed(seed)  # as train_linear_probe: init, then orders
    probe = LinearProbe(dim, num_classes, gen).to(device)
    opt = torch.optim.SGD(
        probe.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(spec.milestones), gamma=spec.lr_decay)
    n = len(train_set)  # type: ignore[arg-type]
    probe.train()
    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=gen)
        batches = epoch_batches(order, spec.batch_size, rank, world)
        loader = DataLoader(train_set, batch_sampler=batches, num_workers=num_workers)
        for h, y in _views(encoder, loader, device):
            # the mean over the global batch: local sums, summed over the ranks
            loss = F.cross_entropy(probe(h), y, reduction="sum") / _global_count(len(y), device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _sum_gradients(probe)
            opt.step()
        sched.step()
    return probe.eval()


def _global_count(local: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return local
    count = torch.tensor([local], dtype=torch.int64, device=device)
    dist.all_reduce(count)
    return int(count)


def _sum_gradients(probe: nn.Module) -> None:
    if dist.is_initialized():
        for p in probe.parameters():
            assert p.grad is not None
            dist.all_reduce(p.grad)


def standard_probe_metrics(w: Any, epoch: int) -> dict[str, float]:
    """For the trainer (a Worker): the re-augmented lp's accuracies at the last epoch of an SCL
    trial whose `evaluation.probes.augment` is `both`; nothing otherwise."""
    trial, crit = w.trial, w.core.criterion
    probes = trial.evaluation.probes
    if not (crit.needs_class_means and epoch == trial.train.epochs and probes.enabled):
        return {}
    if probes.augment != "both":
        return {}
    splits = ("val", "test") if w.has_val else ("test",)
    probe = train_reaugmented_probe(
        w.core.encoder,
        w.data.train,
        w.data.num_classes,
        probes,
        trial.seed,
        w.device,
        num_workers=trial.dataset.num_workers,
    )
    out = {}
    for split in splits:
        x, y = gather_features(w.core.encoder, w.loaders[split], w.device)
        out[f"{split}/lp_aug_acc1"] = probe_accuracy(probe.cpu(), x, y)
    return out
