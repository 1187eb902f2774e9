"""A FIFO memory bank of detached past embeddings and labels, kept per worker.

Appended to a contrastive pool as extra negatives/positives (spec/losses.md, `queue_size`).

The rows are plain tensors, not buffers: DDP broadcasts every buffer from rank 0 before each
forward, which would replace each worker's queue by rank 0's (wrong with `negatives: local`,
where each worker queues its own batches) and send the whole queue every step. With global
negatives every worker pushes the same gathered batch, so the queues agree without any traffic.
They still travel in `state_dict()` under the keys buffers would have (`queue.z`, `queue.y`,
`queue.ptr`, `queue.filled`), so checkpoints keep them, and they follow `.to()` / `.double()`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

_STATE = ("z", "y", "ptr", "filled")


class EmbeddingQueue(nn.Module):
    """FIFO of the last `size` (z, y) rows; with size 0 it is empty and never stores anything."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"queue_size must be >= 0, got {size}; use 0 to disable the queue")
        self.size = size
        self.z = torch.zeros(size, dim)
        self.y = torch.full((size,), -1, dtype=torch.long)
        self.ptr = 0  # the row the next push writes first (the oldest row once full)
        self.filled = 0

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored rows, oldest first (a detached copy, safe to use in a graph)."""
        if self.filled < self.size:  # not yet wrapped: rows 0..filled-1 in push order
            return self.z[: self.filled].clone(), self.y[: self.filled].clone()
        # full: the oldest row is at ptr (one copy each, no index gather)
        return (
            torch.cat([self.z[self.ptr :], self.z[: self.ptr]]),
            torch.cat([self.y[self.ptr :], self.y[: self.ptr]]),
        )

    @torch.no_grad()
    def push(self, z: Tensor, y: Tensor) -> None:
        """Append rows (oldest are overwritten); keeps only the last `size` if given more."""
        if self.size == 0 or z.shape[0] == 0:
            return
        z, y = z.detach()[-self.size :], y.detach()[-self.size :]
        idx = (self.ptr + torch.arange(z.shape[0], device=self.z.device)) % self.size
        self.z[idx] = z.to(self.z.dtype)
        self.y[idx] = y.to(self.y.dtype)
        self.ptr = (self.ptr + z.shape[0]) % self.size
        self.filled = min(self.filled + z.shape[0], self.size)

    # state_dict: the same keys (and tensors) that buffers would have, without being buffers

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "z"] = self.z
        destination[prefix + "y"] = self.y
        destination[prefix + "ptr"] = torch.tensor(self.ptr)
        destination[prefix + "filled"] = torch.tensor(self.filled)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        keys = {name: prefix + name for name in _STATE}
        found = {name: state_dict[key] for name, key in keys.items() if key in state_dict}
        missing_keys.extend(key for name, key in keys.items() if name not in found)
        if len(found) == len(_STATE):
            if found["z"].shape != self.z.shape:
                error_msgs.append(
                    f"{prefix}z: the checkpoint's queue is {tuple(found['z'].shape)} (queue_size, "
                    f"dim), this loss's is {tuple(self.z.shape)}"
                )
            else:
                self.z = found["z"].to(self.z.device, self.z.dtype).clone()
                self.y = found["y"].to(self.y.device).clone()
                self.ptr, self.filled = int(found["ptr"]), int(found["filled"])
        rest = {k: v for k, v in state_dict.items() if k not in keys.values()}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _apply(self, fn: Any, recurse: bool = True) -> EmbeddingQueue:
        # .to(), .double(), .cuda() reach buffers through _apply: move the queue with them
        super()._apply(fn, recurse)
        self.z, self.y = fn(self.z), fn(self.y)
        return self

    def extra_repr(self) -> str:
        return f"size={self.size}"
