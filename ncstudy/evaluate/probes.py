"""Classifiers for SCL representations (spec/losses.md): the `lp` and `nlp` probes. (The `fp`
prototypes are set by the trainer's training-set metrics pass, ncstudy.evaluate.passes.nc_pass.)

The probes train on precomputed, frozen encoder features. Training on un-augmented features is
the CPU path; the paper's protocol re-augments the images every probe epoch (90 epochs), which
needs encoder forward passes per epoch and belongs to the trainer. Probes report their last
epoch: no model selection on the test set.
"""

from __future__ import annotations

import math

import torch
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
    milestones: tuple[int, ...] = (),
    lr_decay: float = 0.2,
) -> nn.Module:
    """Train an lp (normalized=False) or nlp (normalized=True) probe with SGD on frozen features,
    the lr multiplied by `lr_decay` after each epoch in `milestones` (the paper's step decay).

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
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=lr_decay)
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
        schedule.step()
    probe.eval()
    return probe


@torch.no_grad()
def probe_accuracy(probe: nn.Module, features: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of a probe (or any scorer) on features."""
    predictions = probe(features.float()).argmax(dim=1)
    correct = (predictions == labels.to(predictions.device)).sum().item()
    return correct / max(labels.numel(), 1)
