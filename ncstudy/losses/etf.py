"""Fixed simplex-ETF classifier: construction, dimension check and the dot-regression loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ncstudy.losses.base import LossOutput, LossParams, NCLoss, seeded_generator, unit_rows


def check_etf_dims(feature_dim: int, num_classes: int, loss_name: str) -> None:
    """A simplex ETF of K vectors needs d >= K-1 dimensions; raise a ValueError with the fix."""
    if feature_dim < num_classes - 1:
        raise ValueError(
            f"loss '{loss_name}' uses a fixed simplex-ETF classifier, which needs "
            f"model.feature_dim >= num_classes - 1 = {num_classes - 1}, but model.feature_dim is "
            f"{feature_dim}. Fix: set model.feature_dim >= {num_classes - 1}, or use a learned "
            "classifier (classifier: learned for normalised losses; normface instead of etf_dr)."
        )


def simplex_etf(feature_dim: int, num_classes: int, seed: int = 0) -> Tensor:
    """(K, d) rows m_k: unit vectors with m_j . m_k = -1/(K-1), from a seeded random rotation.

    Spec: M = sqrt(K/(K-1)) U (I - 11^T/K). Writing I - 11^T/K = P P^T with P (K x K-1)
    orthonormal, M = sqrt(K/(K-1)) (U P) P^T, and U P is any d x (K-1) matrix with orthonormal
    columns; drawing that directly works for every d >= K-1 (the spec's U needs d >= K).
    """
    check_etf_dims(feature_dim, num_classes, "etf")
    k = num_classes
    gen = seeded_generator(seed, stream=7)
    u, _ = torch.linalg.qr(torch.randn(feature_dim, k - 1, generator=gen, dtype=torch.float64))
    centring = torch.eye(k, dtype=torch.float64) - 1.0 / k
    p, _ = torch.linalg.qr(centring[:, : k - 1])  # orthonormal basis of the centred subspace
    m = math.sqrt(k / (k - 1)) * u @ p.T  # (d, K)
    return F.normalize(m.T, dim=1).float()  # already unit norm; normalise against round-off


class EtfDrParams(LossParams):
    """`etf_dr` has no tunable parameters (the ETF is fixed, dot-regression has no scale)."""


class EtfDotRegressionLoss(NCLoss):
    """etf_dr: fixed simplex-ETF classifier with dot-regression 1/2 (m_y.h - |h|)^2 / sg(|h|),
    on batch-normalised features h = BN(encoder output), as Yang et al. (2022) apply it: their
    ETF classifier puts a BatchNorm1d before the dot regression, so the features it regresses
    are signed (a post-ReLU pool is not, and no unit vector m_y with negative entries can align
    with it). The NC metrics and the predictions read the same BN features (`embed`)."""

    name = "etf_dr"

    def __init__(self, params: EtfDrParams, *, feature_dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.params = params
        self.register_buffer("etf", simplex_etf(feature_dim, num_classes, seed))
        self.feature_bn = nn.BatchNorm1d(feature_dim)

    def embed(self, h: Tensor) -> Tensor:
        """The batch-normalised features: batch statistics in training, running ones in eval.
        Only the loss updates the running statistics (once per step, not per scores call)."""
        return self._batch_norm(h, update=False)

    def _batch_norm(self, h: Tensor, update: bool) -> Tensor:
        bn = self.feature_bn
        track = update or not self.training  # eval reads the running statistics
        mean, var = (bn.running_mean, bn.running_var) if track else (None, None)
        x = h.to(bn.weight.dtype)
        out = F.batch_norm(x, mean, var, bn.weight, bn.bias, self.training, bn.momentum, bn.eps)
        return out.to(h.dtype)

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        h = self._batch_norm(h, update=True)
        norm = h.norm(dim=1)
        dot = (self.etf[y] * h).sum(dim=1)
        # sg(|h|), clamped so that h = 0 gives 0/eps = 0 rather than 0/0
        per_sample = 0.5 * (dot - norm) ** 2 / norm.detach().clamp_min(1e-12)
        return LossOutput(per_sample.mean(), 0)

    def _scores(self, h: Tensor) -> Tensor:
        return unit_rows(self.embed(h)) @ self.etf.T

    def classifier_weights(self) -> Tensor:
        return self.etf.detach().clone()
