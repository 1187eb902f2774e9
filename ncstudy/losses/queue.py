"""A FIFO memory bank of detached past embeddings and labels, kept as module buffers.

Appended to a contrastive pool as extra negatives/positives (spec/losses.md, `queue_size`).
Being buffers, its contents are part of the loss's state_dict and so of every checkpoint.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EmbeddingQueue(nn.Module):
    """FIFO of the last `size` (z, y) rows; with size 0 it is empty and never stores anything."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"queue_size must be >= 0, got {size}; use 0 to disable the queue")
        self.size = size
        self.register_buffer("z", torch.zeros(size, dim))
        self.register_buffer("y", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored rows (a detached copy, safe to use in a graph before the next push)."""
        n = int(self.filled.item()) if self.size else 0
        return self.z[:n].clone(), self.y[:n].clone()

    @torch.no_grad()
    def push(self, z: Tensor, y: Tensor) -> None:
        """Append rows (oldest are overwritten); keeps only the last `size` if given more."""
        if self.size == 0 or z.shape[0] == 0:
            return
        z, y = z.detach()[-self.size :], y.detach()[-self.size :]
        idx = (self.ptr + torch.arange(z.shape[0], device=self.ptr.device)) % self.size
        self.z[idx] = z.to(self.z.dtype)
        self.y[idx] = y.to(self.y.dtype)
        self.ptr.copy_((self.ptr + z.shape[0]) % self.size)
        self.filled.copy_(torch.clamp(self.filled + z.shape[0], max=self.size))

    def extra_repr(self) -> str:
        return f"size={self.size}"
