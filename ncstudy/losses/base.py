"""The loss interface every ncstudy loss implements, plus shared parameter models and helpers.

A loss owns its classifier (linear head, normalised head, fixed ETF or class prototypes) and its
prediction rule, so the trainer only ever calls `forward`, `scores`, `embed` and the two
class-mean hooks, whatever the loss name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class LossOutput(NamedTuple):
    """What a loss returns: the scalar to minimise and how many anchors it had to drop."""

    loss: Tensor  # 0-dim float32, differentiable
    skipped_anchors: int  # anchors dropped (no positive / no negative) in this call


# --------------------------------------------------------------------------- parameter models


class LossParams(BaseModel):
    """Base of every per-loss parameter model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TemperatureParams(LossParams):
    """Losses on cosine logits: logits are cos / temperature."""

    temperature: float = Field(0.1, gt=0, description="logits are cos/temperature (divides)")


class NormalizedClassifierParams(TemperatureParams):
    """Normalised-classifier losses: learned class weights or a fixed simplex ETF (ablation)."""

    classifier: Literal["learned", "etf"] = Field(
        "learned", description="learned class weights, or a fixed simplex ETF (needs d >= K-1)"
    )


class PoolParams(LossParams):
    """Contrastive pools: global batch (all-gathered) or per-worker, plus an optional FIFO."""

    negatives: Literal["global", "local"] = Field(
        "global", description="pool over the global batch (all workers) or this worker only"
    )
    queue_size: int = Field(
        0, ge=0, description="FIFO of past detached embeddings added to the pool (0: off)"
    )


# --------------------------------------------------------------------------- the interface


def compute_dtype(h: Tensor) -> torch.dtype:
    """float32 for float16/bfloat16/float32 inputs (AMP-safe); float64 stays float64 (UFM)."""
    return torch.promote_types(h.dtype, torch.float32)


class NCLoss(nn.Module):
    """Base class: a loss module with its own head; computes in float32 (or float64 for float64
    inputs) even under AMP."""

    name: str = ""
    num_views: int = 1
    needs_class_means: bool = False

    def embed(self, h: Tensor) -> Tensor:
        """Representation the loss and the NC metrics act on (identity for classifier losses)."""
        return h

    def forward(self, h: Tensor, y: Tensor) -> LossOutput:
        """Loss of encoder outputs h (B*V, d) with labels y (B*V,), in float32 (float64 stays)."""
        if h.dim() != 2 or y.shape != h.shape[:1]:
            raise ValueError(
                f"loss '{self.name}': expected h of shape (N, d) and y of shape (N,), "
                f"got h {tuple(h.shape)} and y {tuple(y.shape)}"
            )
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self._loss(h.to(compute_dtype(h)), y.long())

    def scores(self, h: Tensor) -> Tensor:
        """(B, K) class scores of encoder outputs; the prediction is scores.argmax(1)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self._scores(h.to(compute_dtype(h)))

    def classifier_weights(self) -> Tensor | None:
        """(K, embed_dim) detached classifier rows (W, ETF or prototypes) for the NC metrics."""
        return None

    def set_class_means(self, means: Tensor) -> None:  # noqa: B027 - optional hook
        """Receive exact class means of normalised embed() outputs; a no-op unless needed."""

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        raise NotImplementedError

    def _scores(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


# --------------------------------------------------------------------------- helpers


def seeded_generator(seed: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for reproducible head initialisation that leaves the global RNG alone."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def seeded_linear(in_dim: int, out_dim: int, generator: torch.Generator, bias: bool = True):
    """nn.Linear with PyTorch's default init (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), seeded."""
    layer = nn.utils.skip_init(nn.Linear, in_dim, out_dim, bias=bias)
    bound = 1.0 / math.sqrt(in_dim)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(out_dim, in_dim, generator=generator) * 2 * bound - bound)
        if bias:
            layer.bias.copy_(torch.rand(out_dim, generator=generator) * 2 * bound - bound)
    return layer


def reduce_anchor_losses(
    anchor_losses: Tensor,
    num_local_anchors: int,
    num_valid_global: int,
    world_size: int,
    graph_anchor: Callable[[], Tensor],
) -> LossOutput:
    """Mean over valid anchors, scaled so that the DDP average over workers is the global mean.

    anchor_losses holds the losses of this worker's valid anchors. Each worker returns
    world_size * sum(local) / num_valid_global; DDP averages the gradients over world_size
    workers, which gives the gradient of sum(all valid) / num_valid_global. With no valid anchor
    the loss is an exact zero that still depends on graph_anchor() (so collectives in backward
    run on every worker); graph_anchor is called only then.
    """
    skipped = num_local_anchors - anchor_losses.numel()
    if anchor_losses.numel() == 0 or num_valid_global == 0:
        return LossOutput(graph_anchor().sum() * 0.0, skipped)
    loss = anchor_losses.sum() * (world_size / num_valid_global)
    return LossOutput(loss, skipped)


# The floor on a row's norm when the losses normalise it. F.normalize's default (1e-12) gives an
# all-zero row a gradient of 1e12 times its upstream gradient, which overflows float16 under AMP
# (GradScaler then shrinks its scale towards zero and every other gradient underflows); 1e-4
# bounds that factor at 1e4 and leaves any row with a norm above 1e-4 exactly unit-normalised.
NORM_EPS = 1e-4


def unit_rows(x: Tensor) -> Tensor:
    """Rows scaled to unit norm (norms below NORM_EPS are divided by NORM_EPS instead).

    The same map as F.normalize(x, dim=1, eps=NORM_EPS), with a fused backward (three passes
    over x instead of seven; it is a third of a NormFace step on CPU at B = d = 512)."""
    return _UnitRows.apply(x)


class _UnitRows(torch.autograd.Function):
    """z = x / max(||x||, eps) per row; backward (g - z (g . z)) / n, or g / eps where clamped."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        clamped = norms < NORM_EPS
        norms = norms.clamp_min(NORM_EPS)
        z = x / norms
        ctx.save_for_backward(z, norms, clamped)
        return z

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        z, norms, clamped = ctx.saved_tensors
        # a clamped row is x / eps (a constant divisor): no radial term
        radial = torch.linalg.vecdot(grad, z, dim=1).unsqueeze(1).masked_fill_(clamped, 0.0)
        return torch.addcmul(grad, z, radial, value=-1.0).div_(norms)
