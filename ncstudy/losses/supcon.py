"""Supervised contrastive learning (`supcon`, Khosla et al. 2020, "all" mode).

V >= 2 augmented views per image pass through the encoder and a projection head
(Linear-ReLU-Linear, 128-d by default); the loss acts on the L2-normalised projections over the
global pool. The classifier is the fixed-prototype one (`fp`); `lp`/`nlp` probes live in
ncstudy.evaluate.probes.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ncstudy.losses.base import (
    LossOutput,
    NCLoss,
    PoolParams,
    TemperatureParams,
    reduce_anchor_losses,
    seeded_generator,
    seeded_linear,
    unit_rows,
)
from ncstudy.losses.distributed import gather_batch
from ncstudy.losses.prototypes import FixedPrototypeClassifier
from ncstudy.losses.queue import EmbeddingQueue


class SupConParams(PoolParams, TemperatureParams):
    """SupCon: temperature, views, projection head and the negative pool."""

    views: int = Field(2, ge=2, description="augmented views per image (V >= 2)")
    projection: Literal["mlp", "none"] = Field(
        "mlp", description="Linear-ReLU-Linear head, or none: the loss acts on h itself (UFM)"
    )
    projection_dim: int = Field(128, ge=1, description="output size of the projection head")
    projection_hidden_dim: int | None = Field(
        None, ge=1, description="hidden size of the projection head (default: feature_dim)"
    )


def supcon_anchor_losses(
    z_anchor: Tensor,
    z_pool: Tensor,
    y_anchor: Tensor,
    y_pool: Tensor,
    anchor_cols: Tensor,
    tau: float,
) -> tuple[Tensor, Tensor]:
    """Per valid anchor: logsumexp_{A(a)} s_aq - mean_{P(a)} s_ap; and the validity mask."""
    logits = z_anchor @ z_pool.T / tau
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[torch.arange(z_anchor.shape[0], device=z_anchor.device), anchor_cols] = True
    positives = (y_anchor[:, None] == y_pool[None, :]) & ~is_self
    num_pos = positives.sum(dim=1)
    valid = num_pos > 0
    logits, positives, is_self = logits[valid], positives[valid], is_self[valid]
    log_denominator = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
    mean_positive = (logits * positives).sum(dim=1) / num_pos[valid]
    return log_denominator - mean_positive, valid


class SupConLoss(FixedPrototypeClassifier, NCLoss):
    """supcon over V views stacked view-major; predicts with the fixed prototypes (fp)."""

    name = "supcon"

    def __init__(self, params: SupConParams, *, feature_dim: int, num_classes: int, seed=0):
        super().__init__()
        self.params = params
        self.num_views = params.views
        self.num_classes = num_classes
        hidden = params.projection_hidden_dim or feature_dim
        gen = seeded_generator(seed, stream=3)
        out_dim = params.projection_dim if params.projection == "mlp" else feature_dim
        self.projector: nn.Module = (
            nn.Sequential(
                seeded_linear(feature_dim, hidden, gen),
                nn.ReLU(),
                seeded_linear(hidden, params.projection_dim, gen),
            )
            if params.projection == "mlp"
            else nn.Identity()
        )
        self.queue = EmbeddingQueue(params.queue_size, out_dim)
        self._init_prototypes(num_classes, out_dim)

    def embed(self, h: Tensor) -> Tensor:
        """Projection-head output (not normalised)."""
        return self.projector(h)

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        if h.shape[0] % self.num_views:
            raise ValueError(
                f"loss 'supcon' expects the {self.num_views} views stacked view-major "
                f"(B*V rows), got {h.shape[0]} rows, not a multiple of views={self.num_views}"
            )
        z = unit_rows(self.embed(h))
        batch = gather_batch(z, y, self.params.negatives == "global")
        queue_z, queue_y = self.queue.contents()
        z_pool, y_pool = torch.cat([batch.z, queue_z]), torch.cat([batch.y, queue_y])
        cols = batch.offset + torch.arange(z.shape[0], device=z.device)
        tau = self.params.temperature
        losses, _ = supcon_anchor_losses(z, z_pool, y, y_pool, cols, tau)
        counts = torch.bincount(y_pool, minlength=self.num_classes)
        num_valid = int((counts[batch.y] > 1).sum().item())  # a positive besides itself
        if self.training:
            self.queue.push(batch.z, batch.y)
        return reduce_anchor_losses(losses, z.shape[0], num_valid, batch.world_size, batch.z.sum)
