"""Normalised losses on the hypersphere: `normface`, `ntce`, `nonl`, `nonl_instance`, `prototype`.

All logits are cosines divided by the temperature, reduced with log-sum-exp in float32.
`ntce` and `nonl` anchor on the class weight of each sample's label and contrast it against a
pool of embeddings: the global batch (gradient-preserving all-gather), optionally extended by a
FIFO queue of past embeddings (spec/losses.md).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ncstudy.losses.base import (
    LossOutput,
    NCLoss,
    NormalizedClassifierParams,
    PoolParams,
    TemperatureParams,
    reduce_anchor_losses,
    seeded_generator,
    unit_rows,
)
from ncstudy.losses.distributed import gather_batch
from ncstudy.losses.etf import simplex_etf
from ncstudy.losses.prototypes import FixedPrototypeClassifier
from ncstudy.losses.queue import EmbeddingQueue


class NTCEParams(PoolParams, NormalizedClassifierParams):
    """NTCE / NONL: temperature, classifier, negative pool and queue."""


class PrototypeParams(TemperatureParams):
    """Eq. 6 prototype loss: batch class means over the global or the local batch."""

    negatives: Literal["global", "local"] = Field(
        "global", description="class means over the global batch (all workers) or this worker"
    )


# --------------------------------------------------------------------------- functional cores


def _anchor_rows(anchor_rows: Tensor | None, anchor_cols: Tensor) -> Tensor:
    """Row of each anchor in the weight rows; by default anchor i uses row i."""
    if anchor_rows is not None:
        return anchor_rows
    return torch.arange(anchor_cols.numel(), device=anchor_cols.device)


class _RowContrast(torch.autograd.Function):
    """Per anchor a: logsumexp_j (c[r_a, j] / tau over j not excluded) - c[r_a, col_a] / tau.

    c holds cosines (rows: class weights, columns: pool members). The log-sum-exp runs once per
    row (it depends on the class only); the backward is one pass over c: grad_c[r, j] =
    (sum_{a: r_a = r} g_a) softmax_r(j) / tau - sum_{a: (r_a, col_a) = (r, j)} g_a / tau.
    A row with every member excluded gets a finite value and a zero gradient (callers drop it).
    """

    @staticmethod
    def forward(ctx, cos, excluded, rows, cols, tau):  # type: ignore[override]
        # excluded: None, a boolean mask like cos, or (row, column) indices of the entries
        if excluded is None:
            masked = cos
        elif isinstance(excluded, tuple):
            masked = cos.index_put(excluded, cos.new_tensor(float("-inf")))
        else:
            masked = cos.masked_fill(excluded, float("-inf"))
        # cosines are >= -1, so -2 only replaces the -inf max of a row with everything excluded
        top = masked.amax(dim=1, keepdim=True).clamp_min_(-2.0)
        exp = masked.sub(top).div_(tau).exp_()
        # any other row holds exp(0) = 1, so the clamp only touches rows with everything excluded
        total = exp.sum(dim=1, keepdim=True).clamp_min_(1.0)
        log_denominator = (top / tau + total.log()).squeeze(1)
        ctx.save_for_backward(exp, total, rows, cols)
        ctx.tau = tau
        return log_denominator[rows] - cos[rows, cols] / tau

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        exp, total, rows, cols = ctx.saved_tensors
        tau = ctx.tau
        per_row = grad.new_zeros(exp.shape[0]).index_add_(0, rows, grad)
        grad_cos = exp * (per_row[:, None] / (total * tau))
        grad_cos.index_put_((rows, cols), grad / -tau, accumulate=True)
        return grad_cos, None, None, None, None


def ntce_anchor_losses(
    w_rows: Tensor,
    z_pool: Tensor,
    anchor_cols: Tensor,
    tau: float,
    anchor_rows: Tensor | None = None,
) -> Tensor:
    """NTCE per anchor i: -S_ii + logsumexp_j S_ij, S_ij = w_{y_i} . z_j / tau over the pool.

    w_rows holds (normalised) class weights; anchor i uses row anchor_rows[i] (default: row i).
    The denominator depends on the class only, so one row per class is enough.
    """
    rows = _anchor_rows(anchor_rows, anchor_cols)
    return _RowContrast.apply(w_rows @ z_pool.T, None, rows, anchor_cols, tau)


def nonl_anchor_losses(
    w_rows: Tensor,
    z_pool: Tensor,
    row_labels: Tensor | None,
    y_pool: Tensor,
    anchor_cols: Tensor,
    tau: float,
    anchor_rows: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """NONL per valid anchor: -S_ii + logsumexp over other-class pool members; and the mask.

    Rows as in ntce_anchor_losses; row_labels[r] is the class of row r (None: row r is class r,
    all classes, so pool member j is excluded from row y_j alone: no R x N mask). An anchor
    whose class has no other-class pool member is invalid (dropped).
    """
    rows = _anchor_rows(anchor_rows, anchor_cols)
    if row_labels is None:
        columns = torch.arange(y_pool.numel(), device=y_pool.device)
        excluded: Tensor | tuple[Tensor, Tensor] = (y_pool, columns)
        row_valid = torch.bincount(y_pool, minlength=w_rows.shape[0]) < y_pool.numel()
    else:
        excluded = row_labels[:, None] == y_pool[None, :]
        row_valid = ~excluded.all(dim=1)
    losses = _RowContrast.apply(w_rows @ z_pool.T, excluded, rows, anchor_cols, tau)
    valid = row_valid[rows]
    if bool(valid.all()):  # the usual case: no selection (and no gradient scatter for it)
        return losses, valid
    return losses[valid], valid


# --------------------------------------------------------------------------- heads


class NormalizedHead(nn.Module):
    """Class weights without bias, used normalised: learned, or a fixed simplex ETF buffer."""

    def __init__(self, feature_dim: int, num_classes: int, classifier: str, seed: int) -> None:
        super().__init__()
        if classifier == "etf":
            self.register_buffer("weight", simplex_etf(feature_dim, num_classes, seed))
        else:
            gen = seeded_generator(seed, stream=2)
            self.weight = nn.Parameter(torch.randn(num_classes, feature_dim, generator=gen))

    def normalized(self) -> Tensor:
        """(K, d) unit-norm class weights w_k."""
        return unit_rows(self.weight)


class NormalizedClassifierLoss(NCLoss):
    """Base of the losses with a normalised head; predicts argmax_k w_k . z."""

    def __init__(self, params, *, feature_dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self.head = NormalizedHead(feature_dim, num_classes, params.classifier, seed)

    def _scores(self, h: Tensor) -> Tensor:
        return unit_rows(h) @ self.head.normalized().T

    def classifier_weights(self) -> Tensor:
        return self.head.weight.detach().clone()


class NormFaceLoss(NormalizedClassifierLoss):
    """normface: -log softmax_k(w_k . z_i / tau)[y_i]."""

    name = "normface"

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        logits = unit_rows(h) @ self.head.normalized().T / self.params.temperature
        return LossOutput(F.cross_entropy(logits, y), 0)


class NonlInstanceLoss(NormalizedClassifierLoss):
    """nonl_instance: -s_iy + logsumexp_{c != y_i} s_ic (the public code's instance variant)."""

    name = "nonl_instance"

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        logits = unit_rows(h) @ self.head.normalized().T / self.params.temperature
        own = F.one_hot(y, self.num_classes).bool()
        positive = logits.gather(1, y[:, None]).squeeze(1)
        per_sample = torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1) - positive
        return LossOutput(per_sample.mean(), 0)


class _ClassToInstanceLoss(NormalizedClassifierLoss):
    """Shared pool logic of NTCE and NONL: gather, append the queue, reduce, enqueue."""

    def __init__(self, params: NTCEParams, *, feature_dim: int, num_classes: int, seed: int = 0):
        super().__init__(params, feature_dim=feature_dim, num_classes=num_classes, seed=seed)
        self.queue = EmbeddingQueue(params.queue_size, feature_dim)

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        z = unit_rows(h)
        batch = gather_batch(z, y, self.params.negatives == "global")
        z_pool, y_pool = batch.z, batch.y
        if self.queue.filled:
            queue_z, queue_y = self.queue.contents()
            z_pool, y_pool = torch.cat([z_pool, queue_z]), torch.cat([y_pool, queue_y])
        w = self.head.normalized()
        cols = torch.arange(batch.offset, batch.offset + z.shape[0], device=z.device)
        classes, anchor_rows = self._class_rows(y)
        w_rows = w if classes is None else w[classes]
        losses = self.anchor_losses(w_rows, z_pool, classes, y_pool, cols, anchor_rows)
        # one worker: the valid anchors are the ones anchor_losses kept (no recount)
        num_valid = losses.numel() if batch.world_size == 1 else self.num_valid(batch.y, y_pool)
        if self.training:
            self.queue.push(batch.z, batch.y)
        graph = lambda: batch.z.sum() + w.sum()  # built only if nothing is valid
        return reduce_anchor_losses(losses, z.shape[0], num_valid, batch.world_size, graph)

    def _class_rows(self, y: Tensor) -> tuple[Tensor | None, Tensor]:
        """Class rows to contrast (None: all K) and each anchor's row among them.

        The denominators depend on the class only, so one row per class is enough. With at
        least as many anchors as classes most classes are present and all K rows cost about
        the same as NormFace's logits; with fewer, only the present classes (torch.unique; at
        B = 512, d = 512 all K rows win up to K ~ 256 and lose 2x at K = 1000).
        """
        if 2 * self.num_classes <= y.numel():
            return None, y
        return torch.unique(y, return_inverse=True)

    def anchor_losses(self, w_rows, z_pool, row_labels, y_pool, cols, anchor_rows) -> Tensor:
        """Losses of the valid local anchors (anchor i uses class row anchor_rows[i]); row r is
        class row_labels[r], or class r when row_labels is None (all K rows)."""
        raise NotImplementedError

    def num_valid(self, y_batch: Tensor, y_pool: Tensor) -> int:
        """Number of valid anchors over the (global) batch rows."""
        raise NotImplementedError


class NTCELoss(_ClassToInstanceLoss):
    """ntce: class weight w_{y_i} contrasted against every pool member (same class included)."""

    name = "ntce"

    def anchor_losses(self, w_rows, z_pool, row_labels, y_pool, cols, anchor_rows) -> Tensor:
        return ntce_anchor_losses(w_rows, z_pool, cols, self.params.temperature, anchor_rows)

    def num_valid(self, y_batch: Tensor, y_pool: Tensor) -> int:
        return y_batch.numel()  # the pool always holds the anchor itself


class NONLLoss(_ClassToInstanceLoss):
    """nonl: like ntce, but the denominator holds only other-class pool members."""

    name = "nonl"

    def anchor_losses(self, w_rows, z_pool, row_labels, y_pool, cols, anchor_rows) -> Tensor:
        tau = self.params.temperature
        return nonl_anchor_losses(w_rows, z_pool, row_labels, y_pool, cols, tau, anchor_rows)[0]

    def num_valid(self, y_batch: Tensor, y_pool: Tensor) -> int:
        counts = torch.bincount(y_pool, minlength=self.num_classes)
        return int(((y_pool.numel() - counts[y_batch]) > 0).sum().item())


class PrototypeLoss(FixedPrototypeClassifier, NCLoss):
    """prototype (Eq. 6): -log[exp(z.mu_y/tau) / sum_c pi_c exp(z.mu_c/tau)], batch means mu_c."""

    name = "prototype"

    def __init__(self, params: PrototypeParams, *, feature_dim: int, num_classes: int, seed=0):
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self._init_prototypes(num_classes, feature_dim)

    def _loss(self, h: Tensor, y: Tensor) -> LossOutput:
        z = unit_rows(h)
        batch = gather_batch(z, y, self.params.negatives == "global")
        onehot = F.one_hot(batch.y, self.num_classes).to(z.dtype)
        counts = onehot.sum(dim=0)
        present = counts > 0
        means = (onehot.T @ batch.z)[present] / counts[present, None]
        log_pi = torch.log(counts[present] / batch.y.numel())
        logits = z @ means.T / self.params.temperature
        target = (torch.cumsum(present.long(), 0) - 1)[y]  # column of y among present classes
        positive = logits.gather(1, target[:, None]).squeeze(1)
        losses = torch.logsumexp(logits + log_pi, dim=1) - positive
        n_global = batch.y.numel()
        return reduce_anchor_losses(losses, z.shape[0], n_global, batch.world_size, batch.z.sum)
