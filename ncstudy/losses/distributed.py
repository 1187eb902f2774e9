"""Gradient-preserving all-gather of embeddings and labels for the global negative pool.

Each worker gathers z and y from every worker, anchors on its own rows, and the backward pass
sums (all-reduces) the gradients every worker's loss sends to each gathered slice, so that each
worker's embeddings receive the gradient of the sum of all workers' losses. DDP's averaging then
yields the single-process gradient on the global batch (see base.reduce_anchor_losses).
Unequal per-worker batch sizes are supported (rows are padded for the collective).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


def distributed_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, or (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_sizes(n: int, device: torch.device, world_size: int) -> tuple[int, ...]:
    size = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    return tuple(int(s.item()) for s in sizes)


def _all_gather_padded(x: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """All-gather rows of x (sizes[r] rows on rank r), padding to the largest, then unpad."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x
    chunks = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(chunks, padded.contiguous())
    return torch.cat([c[:n] for c, n in zip(chunks, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces the gradient and returns this worker's slice."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...], rank: int) -> Tensor:  # type: ignore[override]
        ctx.sizes, ctx.rank = sizes, rank
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        sizes = ctx.sizes
        padded = grad.new_zeros((len(sizes), max(sizes), *grad.shape[1:]))
        for r, chunk in enumerate(grad.split(list(sizes))):
            padded[r, : chunk.shape[0]] = chunk
        dist.all_reduce(padded)
        return padded[ctx.rank, : sizes[ctx.rank]], None, None


class GatheredBatch(NamedTuple):
    """The pool rows from every worker and where this worker's rows start in it."""

    z: Tensor  # (N_global, D), differentiable w.r.t. every worker's rows
    y: Tensor  # (N_global,)
    offset: int  # index of this worker's first row in z / y
    world_size: int


def gather_batch(z: Tensor, y: Tensor, use_global: bool = True) -> GatheredBatch:
    """Global batch (gradient-preserving) when distributed and use_global, else the local one."""
    rank, world_size = distributed_world()
    if not use_global or world_size == 1:
        return GatheredBatch(z, y, 0, 1)
    sizes = _gather_sizes(z.shape[0], z.device, world_size)
    z_all = _GatherWithGrad.apply(z, sizes, rank)
    y_all = _all_gather_padded(y, sizes)
    return GatheredBatch(z_all, y_all, sum(sizes[:rank]), world_size)
