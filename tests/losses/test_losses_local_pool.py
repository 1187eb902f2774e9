"""`negatives: local` is the source paper's per-GPU pool (its NTCE/NONL contrast each worker's
256 samples only, Appendix E): on 2 gloo workers, each worker's loss and feature gradient are
those of a single process on that worker's samples alone, with the world-size scaling that
DDP's averaging undoes (`reduce_anchor_losses` on a local pool: world_size / world_size).
The same 2-worker spawn checks the re-augmented linear probe (Table 14): each rank loads its part
of every global batch and the probe's gradient is summed, so both ranks hold the probe of one
process on the whole training set."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from ncstudy.evaluate.reaug_probe import train_reaugmented_probe
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
    results["probe"] = probe_state()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def probe_state() -> dict[str, torch.Tensor]:
    """A re-augmented probe (identity augmentation) on 23 samples in global batches of 8 (the
    last one of 7: unequal parts per rank), from the same seed on every rank."""
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(23, D, generator=gen), torch.arange(23) % K
    spec = SimpleNamespace(
        epochs=3, lr=0.5, momentum=0.9, weight_decay=0.0, batch_size=8, milestones=[2], lr_decay=0.5
    )
    encoder = torch.nn.Linear(D, 4)
    torch.nn.init.constant_(encoder.weight, 0.1)
    torch.nn.init.zeros_(encoder.bias)
    with torch.no_grad():
        encoder.weight[0] += torch.arange(D) / D  # features that carry the input
    probe = train_reaugmented_probe(encoder, TensorDataset(x, y), K, spec, 3, torch.device("cpu"))
    return {k: v.detach().clone() for k, v in probe.state_dict().items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("pool")
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.distributed
def test_reaugmented_probe_is_the_single_process_probe_on_every_rank(ranks: list[dict]) -> None:
    alone = probe_state()  # no process group: one process, every sample of every batch
    for rank in ranks:
        for key, value in alone.items():
            torch.testing.assert_close(rank["probe"][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.distributed
def test_local_pool_is_each_workers_own_batch(ranks: list[dict]) -> None:
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
