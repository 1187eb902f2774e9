"""Evaluation passes inside a worker: accuracy and the NC-metrics pass over a sharded dataset.

Each rank reads the samples `rank::world_size` (no padding, so no sample counts twice), and the
counts and statistics are summed across ranks before anything is computed: the results do not
depend on the number of workers or on the batch size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ncstudy.evaluate.probes import probe_accuracy, train_linear_probe
from ncstudy.metrics import NCAccumulator, NCStatistics, compute_nc_metrics
from ncstudy.metrics.compute import compute_classifier_metrics
from ncstudy.metrics.stats import nc4_counts, nearest_pass_mean


def shard_loader(
    dataset: Dataset,
    rank: int,
    world_size: int,
    batch_size: int,
    num_workers: int = 0,
    persistent_workers: bool = False,
) -> DataLoader:
    """Sequential loader over this rank's shard `rank::world_size` of `dataset`, decoded by
    `num_workers` processes (the dataset's setting; 0 decodes in the worker itself)."""
    indices = list(range(rank, len(dataset), world_size))  # type: ignore[arg-type]
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=persistent_workers and num_workers > 0,
    )


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
    if isinstance(criterion, nn.Module):  # a loss head with BN (etf_dr): running stats
        criterion.eval()
    correct, count = 0.0, 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        pred = criterion.scores(encoder(x)).argmax(1)
        correct += float((pred == y).sum())
        count += len(y)
    correct, count = all_reduce_sum([correct, count], device)
    return correct / max(count, 1.0)


# Per-worker budget of nc_pass's feature cache for exact one-pass nc4 (beyond it: a second pass).
NC4_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class NCPassResult:
    """The NC metrics of one pass and where its nc4 came from: "exact" (predictions scored
    against this pass's class means from the feature cache), "second_pass" (the same, scored in
    a second pass: the cache overflowed, or the predictions needed this pass's prototypes) or
    "none" (no metrics were asked for)."""

    metrics: dict[str, float]
    nc4_source: str


@torch.no_grad()
def nc_pass(
    encoder: nn.Module,
    criterion: Any,
    loader: DataLoader,
    num_classes: int,
    device: torch.device,
    max_intra_classes: int,
    *,
    set_prototypes: bool = False,
    with_metrics: bool = True,
) -> NCPassResult:
    """One pass over (a shard of) an un-augmented split: the NC metrics of the statistics
    reduced over all ranks, computed with the loss's own classifier.

    Only the training-set pass may pass `set_prototypes=True`: it stores this pass's exact
    normalised class means as the loss's fixed prototypes (SCL fp). Passes over other splits
    (test) leave the classifier alone, so no test statistic reaches the model or checkpoint.
    A rank with an empty shard contributes zeros (every rank joins every collective).
    """
    encoder.eval()
    if isinstance(criterion, nn.Module):  # a loss head with BN (etf_dr): running stats
        criterion.eval()
    # Predictions that depend on this pass's prototypes cannot be scored during it.
    predict_now = not (set_prototypes and criterion.needs_class_means)
    acc: NCAccumulator | None = None
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        h = encoder(x)
        z = criterion.embed(h).float()
        if acc is None:
            acc = NCAccumulator(
                num_classes,
                z.shape[1],
                max_intra_classes=max_intra_classes,
                device=device,
                nc4_cache_bytes=NC4_CACHE_BYTES,
            )
        acc.update(z, y, criterion.scores(h).argmax(1) if predict_now else None)
    dim = _agreed_dim(None if acc is None else acc.dim, device)
    if acc is None:  # an empty shard: zeros of the right shape
        acc = NCAccumulator(num_classes, dim, max_intra_classes=max_intra_classes, device=device)
    acc.all_reduce()
    stats = acc.statistics()
    if set_prototypes and criterion.needs_class_means:
        means = stats.sum_normalized / stats.counts.clamp_min(1).unsqueeze(1)
        criterion.set_class_means(F.normalize(means, dim=1).float())
    if not with_metrics:
        return NCPassResult({}, "none")
    if stats.nc4_samples is None:
        # nc4 is defined against this pass's class means (spec/metrics.md): when they were not
        # known while predicting (prototypes) or the feature cache overflowed (large shards),
        # score the predictions in a second pass. Exact, at the cost of one inference pass.
        stats = _nc4_second_pass(encoder, criterion, loader, stats, device)
    weights = criterion.classifier_weights()
    metrics = compute_nc_metrics(stats, None if weights is None else weights.double().to(device))
    return NCPassResult(metrics, stats.nc4_source or "none")


def _agreed_dim(local: int | None, device: torch.device) -> int:
    """The feature dimension of the pass on every rank (a rank with no data does not know it);
    raises on every rank at once if no rank saw any data."""
    dim = torch.tensor([local or 0], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(dim, op=dist.ReduceOp.MAX)
    if int(dim) == 0:
        raise ValueError("the metrics pass saw no data: the split is empty on every worker")
    return int(dim)


@torch.no_grad()
def _nc4_second_pass(
    encoder: nn.Module, criterion: Any, loader: DataLoader, stats: Any, device: torch.device
) -> Any:
    """nc4 counts of the loss's predictions against the class means of `stats` (reduced)."""

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, _ in loader:
            h = encoder(x.to(device, non_blocking=True))
            yield criterion.embed(h), criterion.scores(h).argmax(1)

    mismatches, samples = nc4_counts(stats.counts, stats.sum_features, batches())
    mismatches, samples = all_reduce_sum([mismatches, samples], device)
    return dataclasses.replace(
        stats, nc4_mismatches=mismatches, nc4_samples=samples, nc4_source="second_pass"
    )


@torch.no_grad()
def gather_features(
    encoder: nn.Module, loader: DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen encoder outputs and labels of every rank's shard, gathered on every rank (CPU).
    A rank with an empty shard contributes nothing (and still joins the gather)."""
    encoder.eval()
    feats, labels = [], []
    for x, y in loader:
        feats.append(encoder(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y.cpu())
    local = (torch.cat(feats), torch.cat(labels)) if feats else None
    parts: list[Any] = [local]
    if dist.is_initialized():
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("gather_features: the split is empty on every worker")
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def probe_accuracies(
    encoder: nn.Module,
    loaders: dict[str, DataLoader],
    num_classes: int,
    device: torch.device,
    spec: Any,
    seed: int,
    *,
    splits: tuple[str, ...] = ("val", "test"),
    nc_metrics: bool = False,
) -> dict[str, float]:
    """Linear probing (lp) and normalised linear probing (nlp) on the frozen encoder, trained on
    the un-augmented training set; accuracy on `splits`. Every rank trains the same probes
    from the same gathered features and seed, so all ranks return identical numbers.

    With `nc_metrics`, also the NC metrics of each probe as a classifier of the encoder
    outputs (`nc/lp/<metric>`, `nc/nlp/<metric>`): the weight-dependent metrics and nc4.
    """
    train_x, train_y = gather_features(encoder, loaders["train"], device)
    evals = {split: gather_features(encoder, loaders[split], device) for split in splits}
    # The probe-independent part of the probes' NC metrics: built once, shared by lp and nlp.
    basis = probe_nc_basis(train_x, train_y, num_classes) if nc_metrics else None
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
            milestones=tuple(spec.milestones),
            lr_decay=spec.lr_decay,
            seed=seed,
        )
        for split, (x, y) in evals.items():
            out[f"{split}/{name}_acc1"] = probe_accuracy(probe, x, y)
        if basis is not None:
            metrics = probe_nc_metrics(probe, train_x, basis)
            out.update({f"nc/{name}/{k}": v for k, v in metrics.items()})
    return out


@dataclass(frozen=True)
class ProbeNCBasis:
    """What the probes' NC metrics share: the statistics of the gathered training features
    and each feature's nearest class mean (nc4's reference); neither depends on a probe."""

    stats: NCStatistics
    nearest: torch.Tensor  # (N,) nearest class mean of each training feature


@torch.no_grad()
def probe_nc_basis(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ProbeNCBasis:
    """The probe-independent part of `probe_nc_metrics`, from features that every rank already
    holds in full: no all-reduce, no per-class scatter."""

    acc = NCAccumulator(num_classes, features.shape[1], max_intra_classes=0)
    acc.update(features, labels)
    stats = acc.statistics()
    return ProbeNCBasis(stats, nearest_pass_mean(features, stats.counts, stats.sum_features))


@torch.no_grad()
def probe_nc_metrics(
    probe: nn.Module, features: torch.Tensor, basis: ProbeNCBasis
) -> dict[str, float]:
    """The NC metrics that depend on a probe: its weight rows against the class means of the
    gathered training `features` (summarised in `basis`), and nc4 of its predictions."""
    predictions = probe(features.float()).argmax(1)
    stats = dataclasses.replace(
        basis.stats,
        nc4_mismatches=float((basis.nearest != predictions).sum()),
        nc4_samples=float(len(predictions)),
        nc4_source="exact",
    )
    return compute_classifier_metrics(stats, probe.weight.detach().double())
