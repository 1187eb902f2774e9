"""The classifiers of Jiang et al., "Generalized Neural Collapse for a Large Number of Classes":
normalised-softmax CE (logits w^_k . z / tau) with a classifier that is not trained.

- `fixed_code`: W fixed to a softmax code (ncstudy.losses.codes) or given rows, with a chosen
  assignment of classes to code points (the paper's Figure 4).
- `cmf`: the class-mean-feature classifier (Section 5): the rows are exponential moving averages
  of the mini-batch class means of the normalised features, updated after each training step's
  loss (the means of the global batch: all-reduced over the workers, so every worker holds the
  same rows and the result does not depend on the number of workers).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from ncstudy.losses.base import LossOutput, NCLoss, TemperatureParams, unit_rows
from ncstudy.losses.codes import softmax_code
from ncstudy.losses.distributed import distributed_world


class FixedCodeParams(TemperatureParams):
    """A fixed classifier: a named softmax code or given rows, and which row each class uses."""

    code: Literal["auto", "simplex", "cross", "polygon", "given"] = Field(
        "auto",
        description="simplex (K <= d+1), cross (K <= 2d), polygon (d = 2), given, or auto "
        "(the first of simplex, cross, polygon that exists)",
    )
    weights: list[list[float]] | None = Field(
        None, description="the code's rows (code: given), each of length model.feature_dim"
    )
    assignment: list[int] | None = Field(
        None, description="class k uses code row assignment[k] (default: row k)"
    )

    @model_validator(mode="after")
    def _given_rows(self) -> FixedCodeParams:
        if (self.code == "given") != (self.weights is not None):
            raise ValueError("weights: give them exactly when code is 'given'")
        if self.assignment is not None and len(set(self.assignment)) != len(self.assignment):
            raise ValueError(f"assignment: two classes share a code row in {self.assignment}")
        return self


def fixed_code_rows(params: FixedCodeParams, feature_dim: int, num_classes: int) -> Tensor:
    """The (K, d) unit classifier rows the parameters describe; ValueErrors name the field."""
    n_rows = num_classes if params.assignment is None else max(params.assignment) + 1
    if params.weights is not None:
        code = torch.tensor(params.weights, dtype=torch.float32)
        if code.dim() != 2 or code.shape[1] != feature_dim:
            raise ValueError(
                f"params.weights: rows must have model.feature_dim = {feature_dim} entries"
            )
        if bool((code.norm(dim=1) == 0).any()):
            raise ValueError("params.weights: a row is zero (it has no direction)")
    else:
        code = softmax_code(params.code, feature_dim, n_rows)
    assignment = params.assignment if params.assignment is not None else list(range(num_classes))
    if len(assignment) != num_classes or min(assignment) < 0 or max(assignment) >= len(code):
        raise ValueError(
            f"params.assignment: needs one code row (0..{len(code) - 1}) per class "
            f"({num_classes} classes), got {assignment}"
        )
    return unit_rows(code[torch.tensor(assignment)])


class FixedCodeLoss(NCLoss):
    """fixed_code: -log softmax_k(w^_k . z / tau)[y] with W a fixed buffer (no gradient)."""

    name = "fixed_code"

    def __init__(self, params: FixedCodeParams, *, feature_dim: int, num_classes: int, seed=0):
        super().__init__()
        self.params = params
        self.register_buffer("weight", fixed_code_rows(params, feature_dim, num_classes))

    @staticmethod
    def check_dims(params: FixedCodeParams, feature_dim: int, num_classes: int) -> None:
        """Refuse a code that does not exist for (d, K) before training."""
        fixed_code_rows(params, feature_dim, num_classes)

    def _scores(self, h: Tensor) -> Tensor:
        return unit_rows(h) @ self.weight.T

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        return LossOutput(F.cross_entropy(self._scores(h) / self.params.temperature, y), 0)

    def classifier_weights(self) -> Tensor:
        return self.weight.detach().clone()


class CMFParams(TemperatureParams):
    """The class-mean-feature classifier's EMA: rows <- m rows + (1 - m) batch class means."""

    momentum: float = Field(
        0.9, ge=0, lt=1, description="EMA weight m of the old rows (0: the last batch's means)"
    )


class CMFLoss(NCLoss):
    """cmf: normalised-softmax CE against rows that are running class means of z = h / ||h||.

    A class's row is its first batch mean, then the EMA; rows of unseen classes are zero
    (score 0). The loss of a batch uses the rows before that batch's update."""

    name = "cmf"

    def __init__(self, params: CMFParams, *, feature_dim: int, num_classes: int, seed=0):
        super().__init__()
        self.params = params
        self.register_buffer("means", torch.zeros(num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def _scores(self, h: Tensor) -> Tensor:
        return unit_rows(h) @ unit_rows(self.means).T

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        loss = F.cross_entropy(self._scores(h) / self.params.temperature, y)
        if self.training:
            self.update(unit_rows(h.detach()), y)
        return LossOutput(loss, 0)

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor) -> None:
        """Move the rows of the classes in the (global) batch towards their batch means."""
        onehot = F.one_hot(y, self.means.shape[0]).to(z.dtype)
        stats = torch.cat([onehot.T @ z, onehot.sum(0)[:, None]], dim=1)
        if distributed_world()[1] > 1:
            dist.all_reduce(stats)
        sums, counts = stats[:, :-1], stats[:, -1]
        present = counts > 0
        batch_means = sums[present] / counts[present, None]
        m = self.params.momentum
        old = self.means[present]
        ema = torch.where(self.seen[present, None], m * old + (1 - m) * batch_means, batch_means)
        self.means[present] = ema.to(self.means.dtype)
        self.seen |= present

    def classifier_weights(self) -> Tensor:
        return self.means.detach().clone()
