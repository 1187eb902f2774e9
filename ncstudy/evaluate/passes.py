"""Evaluation passes inside a worker: accuracy and the NC-metrics pass over a sharded dataset.

Each rank reads the samples `rank::world_size` (no padding, so no sample counts twice), and the
counts and statistics are summed across ranks before anything is computed: the results do not
depend on the number of workers or on the batch size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset


def shard_loader(dataset: Dataset, rank: int, world_size: int, batch_size: int) -> DataLoader:
    """Sequential loader over this rank's shard `rank::world_size` of `dataset`."""
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity without a process group)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def accuracy(encoder: nn.Module, criterion: Any, loader: DataLoader, device: torch.device) -> float:
    """Top-1 accuracy of the loss's prediction rule over all ranks' shards."""
    encoder.eval()
    correct, count = 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        pred = criterion.scores(encoder(x)).argmax(1)
        correct += float((pred == y).sum())
        count += len(y)
    correct, count = all_reduce_sum([correct, count], device)
    return correct / max(count, 1.0)


@torch.no_grad()
def nc_pass(
    encoder: nn.Module,
    criterion: Any,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    max_intra_classes: int,
    with_metrics: bool = True,
) -> dict[str, float]:
    """One pass over (a shard of) the un-augmented training set: sets the loss's class means if
    it needs them (SCL fixed prototypes), then returns the NC metrics of the reduced statistics,
    computed with the loss's own classifier, plus the training accuracy of its prediction rule."""
    from ncstudy.metrics import NCAccumulator, compute_nc_metrics

    encoder.eval()
    # Losses whose predictions depend on this pass's class means (fixed prototypes) cannot
    # score predictions during it: their nc4 is omitted rather than computed with stale means.
    predict_now = not criterion.needs_class_means
    acc: NCAccumulator | None = None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        h = encoder(x)
        z = criterion.embed(h).float()
        if acc is None:
            acc = NCAccumulator(
                num_classes, z.shape[1], max_intra_classes=max_intra_classes, device=device
            )
        acc.update(z, y, criterion.scores(h).argmax(1) if predict_now else None)
    if acc is None:
        raise ValueError("the metrics pass saw no data: the training set is empty")
    acc.all_reduce()
    stats = acc.statistics()
    if criterion.needs_class_means:
        means = stats.sum_normalized / stats.counts.clamp_min(1).unsqueeze(1)
        criterion.set_class_means(F.normalize(means, dim=1).float())
    if not with_metrics:
        return {}
    weights = criterion.classifier_weights()
    return compute_nc_metrics(stats, None if weights is None else weights.double().to(device))


@torch.no_grad()
def gather_features(
    encoder: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen encoder outputs and labels of every rank's shard, gathered on every rank (CPU)."""
    encoder.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(encoder(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y.cpu())
    local = (torch.cat(feats), torch.cat(labels))
    if not dist.is_initialized():
        return local
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def probe_accuracies(
    encoder: nn.Module,
    loaders: dict[str, DataLoader],
    num_classes: int,
    device: torch.device,
    spec: Any,
    seed: int,
) -> dict[str, float]:
    """Linear probing (lp) and normalised linear probing (nlp) on the frozen encoder, trained on
    the un-augmented training set; accuracy on val and test. Every rank trains the same probes
    from the same gathered features and seed, so all ranks return identical numbers."""
    from ncstudy.evaluate.probes import probe_accuracy, train_linear_probe

    train_x, train_y = gather_features(encoder, loaders["train"], device)
    evals = {split: gather_features(encoder, loaders[split], device) for split in ("val", "test")}
    out: dict[str, float] = {}
    for name, normalized in (("lp", False), ("nlp", True)):
        probe = train_linear_probe(
            train_x,
            train_y,
            num_classes,
            normalized=normalized,
            epochs=spec.epochs,
            lr=spec.lr,
            momentum=spec.momentum,
            weight_decay=spec.weight_decay,
            temperature=spec.temperature,
            batch_size=spec.batch_size,
            seed=seed,
        )
        for split, (x, y) in evals.items():
            out[f"{split}/{name}_acc1"] = probe_accuracy(probe, x, y)
    return out
