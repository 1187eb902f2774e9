"""Unnormalised classifier losses on W h + b: `ce`, `ls`, `focal`, `mse`.

`ls`, `focal` and `mse` follow "Are All Losses Created Equal: A Neural Collapse Perspective";
`mse` is that paper's rescaled, summed form kappa (s_y - beta)^2 + sum_{l != y} s_l^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from ncstudy.losses.base import LossOutput, LossParams, NCLoss, seeded_generator, seeded_linear


class CEParams(LossParams):
    """`ce` has no parameters."""


class LabelSmoothingParams(LossParams):
    """Label smoothing: target (1 - alpha) onehot + alpha / K."""

    alpha: float = Field(0.1, ge=0, lt=1, description="smoothing weight alpha in [0, 1)")


class FocalParams(LossParams):
    """Focal loss -(1 - p_y)^gamma log p_y."""

    gamma: float = Field(3.0, ge=0, description="focusing exponent gamma >= 0 (0 is CE)")


class MSEParams(LossParams):
    """Rescaled MSE kappa (s_y - beta)^2 + sum_{l != y} s_l^2."""

    kappa: float = Field(1.0, gt=0, description="weight kappa > 0 of the true-class term")
    beta: float = Field(15.0, gt=0, description="target beta > 0 of the true-class score")


class LinearClassifierLoss(NCLoss):
    """Base of the CL losses with a linear head with bias; predicts argmax(W h + b)."""

    def __init__(self, params: LossParams, *, feature_dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.params = params
        self.head = seeded_linear(feature_dim, num_classes, seeded_generator(seed, stream=1))

    def _scores(self, h: Tensor) -> Tensor:
        return self.head(h)

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        return LossOutput(self.per_sample(self.head(h), y).mean(), 0)

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-sample loss of (B, K) logits."""
        raise NotImplementedError

    def classifier_weights(self) -> Tensor:
        return self.head.weight.detach().clone()


class CrossEntropyLoss(LinearClassifierLoss):
    """ce: -log softmax(W h + b)[y]."""

    name = "ce"

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, reduction="none")


class LabelSmoothingLoss(LinearClassifierLoss):
    """ls: cross-entropy against (1 - alpha) onehot + alpha / K."""

    name = "ls"

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, reduction="none", label_smoothing=self.params.alpha)


class FocalLoss(LinearClassifierLoss):
    """focal: -(1 - p_y)^gamma log p_y, with log p_y from log_softmax (log-sum-exp)."""

    name = "focal"

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
        # 1 - p_y via expm1 (accurate near p_y = 1); the floor keeps the gradient of x^gamma
        # finite at p_y = 1 for gamma < 1
        one_minus_p = (-torch.expm1(log_p)).clamp_min(1e-12)
        return -(one_minus_p**self.params.gamma) * log_p


class RescaledMSELoss(LinearClassifierLoss):
    """mse: kappa (s_y - beta)^2 + sum_{l != y} s_l^2 (summed over classes, not averaged)."""

    name = "mse"

    def per_sample(self, logits: Tensor, y: Tensor) -> Tensor:
        s_y = logits.gather(1, y[:, None]).squeeze(1)
        others = (logits**2).sum(dim=1) - s_y**2
        return self.params.kappa * (s_y - self.params.beta) ** 2 + others
