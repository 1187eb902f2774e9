"""Classifiers for SCL representations (spec/losses.md): `lp`, `nlp` probes and `fp` class means.

The probes train on precomputed, frozen encoder features. Training on un-augmented features is
the CPU path; the paper's protocol re-augments the images every probe epoch (90 epochs), which
needs encoder forward passes per epoch and belongs to the trainer. Probes report their last
epoch: no model selection on the test set.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


class LinearProbe(nn.Module):
    """lp: a linear layer with bias on unnormalised features; logits W f + b."""

    def __init__(self, feature_dim: int, num_classes: int, generator: torch.Generator) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(feature_dim)
        weight = torch.rand(num_classes, feature_dim, generator=generator) * 2 - 1
        self.weight = nn.Parameter(weight * bound)
        self.bias = nn.Parameter((torch.rand(num_classes, generator=generator) * 2 - 1) * bound)

    def forward(self, features: Tensor) -> Tensor:
        """Class logits."""
        return F.linear(features, self.weight, self.bias)


class NormalizedProbe(nn.Module):
    """nlp: NormFace on normalised features; logits w_k . z / temperature, no bias."""

    def __init__(
        self, feature_dim: int, num_classes: int, temperature: float, generator: torch.Generator
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"probe temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.weight = nn.Parameter(torch.randn(num_classes, feature_dim, generator=generator))

    def forward(self, features: Tensor) -> Tensor:
        """Class logits (cosines divided by the temperature)."""
        cos = F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
        return cos / self.temperature


def train_linear_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    normalized: bool,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    temperature: float = 0.1,
    batch_size: int,
    seed: int,
) -> nn.Module:
    """Train an lp (normalized=False) or nlp (normalized=True) probe with SGD on frozen features.

    Features are taken as given (un-augmented on the CPU path; the paper re-augments each epoch).
    Deterministic for a given seed; returns the probe after the last epoch.
    """
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"probe needs epochs >= 1, batch_size >= 1 and lr > 0; got epochs={epochs}, "
            f"batch_size={batch_size}, lr={lr}"
        )
    features = features.detach().float()
    labels = labels.detach().long().to(features.device)
    gen = torch.Generator().manual_seed(seed)
    dim = features.shape[1]
    probe = (
        NormalizedProbe(dim, num_classes, temperature, gen)
        if normalized
        else LinearProbe(dim, num_classes, gen)
    ).to(features.device)
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = features.shape[0]
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(features.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    probe.eval()
    return probe


@torch.no_grad()
def probe_accuracy(probe: nn.Module, features: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of a probe (or any scorer) on features."""
    predictions = probe(features.float()).argmax(dim=1)
    correct = (predictions == labels.to(predictions.device)).sum().item()
    return correct / max(labels.numel(), 1)


class ClassMeanAccumulator:
    """Streaming exact class means of (optionally normalised) embeddings, summed over workers.

    For the `fp` prototypes: update() with every batch of the un-augmented training set on every
    worker, then means() all-reduces sums and counts, so the result does not depend on the
    number of workers or the batch size. Sums are kept in float64.
    """

    def __init__(self, num_classes: int, dim: int, *, normalize: bool = True) -> None:
        self.normalize = normalize
        self.sums = torch.zeros(num_classes, dim, dtype=torch.float64)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Add a batch of embeddings (N, dim) with labels (N,)."""
        z = F.normalize(embeddings.float(), dim=1) if self.normalize else embeddings
        if self.sums.device != z.device:
            self.sums, self.counts = self.sums.to(z.device), self.counts.to(z.device)
        self.sums.index_add_(0, labels.long(), z.to(torch.float64))
        self.counts.index_add_(0, labels.long(), torch.ones_like(labels, dtype=torch.float64))

    def means(self) -> Tensor:
        """(K, dim) float32 class means over all workers; classes never seen are zero rows."""
        sums, counts = self.sums.clone(), self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        return (sums / counts.clamp_min(1.0)[:, None]).float()
