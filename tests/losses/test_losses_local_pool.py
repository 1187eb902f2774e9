"""`negatives: local` is the source paper's per-GPU pool (its NTCE/NONL contrast each worker's
256 samples only, Appendix E): on 2 gloo workers, each worker's loss and feature gradient are
those of a single process on that worker's samples alone, with the world-size scaling that
DDP's averaging undoes (`reduce_anchor_losses` on a local pool: world_size / world_size)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ncstudy.losses import build_loss

D, K, WORLD = 6, 3, 2
CASES = (("ntce", 5, 7), ("nonl", 6, 6), ("supcon", 6, 6))


def batch(n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(23)
    h = torch.randn(n0 + n1, D, generator=gen)
    return h, torch.arange(n0 + n1) % K


def step(name: str, negatives: str, h: torch.Tensor, y: torch.Tensor) -> dict:
    """One step of a fresh loss (same seed everywhere): loss, feature and head gradients."""
    params = {"temperature": 0.2, "negatives": negatives}
    params |= {"projection_dim": 4} if name == "supcon" else {}
    loss = build_loss(name, params, feature_dim=D, num_classes=K, seed=3)
    x = h.clone().requires_grad_(True)
    out = loss(x, y)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in loss.named_parameters()}
    return {"loss": out.loss.detach(), "h_grad": x.grad.clone(), "params": grads}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for name, n0, n1 in CASES:
        h, y = batch(n0, n1)
        rows = slice(0, n0) if rank == 0 else slice(n0, n0 + n1)
        results[name] = step(name, "local", h[rows], y[rows])  # supcon: 3 samples x 2 views
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_local_pool_is_each_workers_own_batch(tmp_path: Path) -> None:
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, n0, n1 in CASES:
        h, y = batch(n0, n1)
        for rank, rows in enumerate((slice(0, n0), slice(n0, n0 + n1))):
            alone = step(name, "local", h[rows], y[rows])  # one process, this worker's rows
            got = ranks[rank][name]
            torch.testing.assert_close(got["loss"], alone["loss"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got["h_grad"], alone["h_grad"], rtol=1e-5, atol=1e-6)
            for key, grad in alone["params"].items():
                torch.testing.assert_close(got["params"][key], grad, rtol=1e-5, atol=1e-6)
        # and it is not the global pool: the whole batch in one process differs on worker 0
        whole = step(name, "global", h, y)
        assert not torch.allclose(ranks[0][name]["h_grad"], whole["h_grad"][:n0] * WORLD)
