"""Long-tailed evaluation: accuracy overall and on many-, medium- and few-shot class groups.

Groups come from the training class counts (the usual thresholds: many > 100 images, few < 20,
medium in between, both from the YAML). Group accuracy is the mean of its classes' test
accuracies (per-class counts are all-reduced, so it does not depend on the number of workers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

GROUPS = ("many", "medium", "few")


def is_imbalanced(class_counts: Sequence[int]) -> bool:
    """True when the training class counts are not all equal."""
    return len(set(int(c) for c in class_counts)) > 1


def class_groups(class_counts: Sequence[int], many: int, few: int) -> dict[str, list[int]]:
    """Classes per group: many-shot (> many images), few-shot (< few), medium (the rest)."""
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for k, n in enumerate(class_counts):
        groups["many" if n > many else "few" if n < few else "medium"].append(k)
    return groups


@torch.no_grad()
def per_class_correct(
    encoder: nn.Module, criterion: Any, loader: DataLoader, num_classes: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(correct, count) per class of the loss's prediction rule, summed over all ranks."""
    encoder.eval()
    if isinstance(criterion, nn.Module):  # a loss head with BN (etf_dr): running stats
        criterion.eval()
    stats = torch.zeros(2, num_classes, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        hit = (criterion.scores(encoder(x)).argmax(1) == y).double()
        stats[0].index_add_(0, y, hit)
        stats[1].index_add_(0, y, torch.ones_like(hit))
    if dist.is_initialized():
        dist.all_reduce(stats)
    return stats[0].cpu().numpy(), stats[1].cpu().numpy()


def group_accuracies(
    correct: np.ndarray, count: np.ndarray, class_counts: Sequence[int], many: int, few: int
) -> dict[str, float]:
    """`lt/acc1` (all test samples) and `lt/<group>_acc1` (mean per-class accuracy of the
    group's classes; NaN for an empty group), plus `lt/<group>_classes`."""
    out = {"lt/acc1": float(correct.sum() / max(count.sum(), 1.0))}
    per_class = correct / np.maximum(count, 1.0)
    for g, classes in class_groups(class_counts, many, few).items():
        seen = [k for k in classes if count[k] > 0]
        out[f"lt/{g}_acc1"] = float(per_class[seen].mean()) if seen else float("nan")
        out[f"lt/{g}_classes"] = float(len(classes))
    return out


def longtail_accuracies(
    encoder: nn.Module,
    criterion: Any,
    device: torch.device,
    spec: Any,
    loader: DataLoader,
    class_counts: Sequence[int],
) -> dict[str, float]:
    """Many/medium/few-shot test accuracies (a LongTailEvalSpec) of the loss's own rule."""
    correct, count = per_class_correct(encoder, criterion, loader, len(class_counts), device)
    return group_accuracies(correct, count, class_counts, spec.many_threshold, spec.few_threshold)


def shard_class_counts(loader: DataLoader, num_classes: int, device: torch.device) -> list[int]:
    """Training class counts from a rank's shard loader over a dataset with `targets`
    (labels only, no image decoding), summed over ranks; falls back to iterating the loader."""
    subset = loader.dataset
    base = getattr(subset, "dataset", None)
    targets = getattr(base, "targets", None)
    if targets is not None and hasattr(subset, "indices"):
        labels = torch.as_tensor(np.asarray(targets)[np.asarray(subset.indices)], dtype=torch.long)
    else:
        labels = torch.cat([y for _, y in loader]) if len(loader) else torch.zeros(0, dtype=int)
    counts = torch.bincount(labels, minlength=num_classes).double().to(device)
    if dist.is_initialized():
        dist.all_reduce(counts)
    return [int(c) for c in counts.cpu()]
