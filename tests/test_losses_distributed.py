"""Global-pool equivalence: 2 gloo workers on two parts of a batch give, after DDP-style gradient
averaging, the gradients of one process on the whole batch (and differ with negatives: local);
fixed-prototype class means are exact whatever the number of workers or the batch size."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ncstudy.evaluate import ClassMeanAccumulator
from ncstudy.losses import build_loss

D, K, WORLD = 6, 3, 2
# (name, params, rows of worker 0, rows of worker 1); supcon rows are per-worker view-major
CASES = [
    ("ntce", {"temperature": 0.2}, 6, 6),
    ("nonl", {"temperature": 0.2}, 6, 6),
    ("supcon", {"temperature": 0.3, "projection_dim": 4}, 6, 6),
    ("prototype", {"temperature": 0.3}, 6, 6),
    ("ntce", {"temperature": 0.2}, 4, 8),  # unequal worker batches
    ("supcon", {"temperature": 0.3, "projection_dim": 4}, 4, 8),
    ("ntce", {"temperature": 0.2, "queue_size": 10}, 6, 6),  # two steps through the queue
]
SEED = 11


def global_batch(n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed random global batch, rows of worker 0 then rows of worker 1."""
    gen = torch.Generator().manual_seed(SEED)
    h = torch.randn(n0 + n1, D, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0, 1])[: n0 + n1]
    return h, y


def run_case(name: str, params: dict, h: torch.Tensor, y: torch.Tensor) -> dict:
    """One or two steps (two with a queue) of a fresh loss; gradients of the last step."""
    loss = build_loss(name, params, feature_dim=D, num_classes=K, seed=3)
    steps = 2 if params.get("queue_size") else 1
    for step in range(steps):
        # an earlier step: other features (a row-wise change, so the FIFO order is the same)
        x = (h if step == steps - 1 else h.roll(1, dims=1)).clone().requires_grad_(True)
        yy = y if step == steps - 1 else (y + 1) % K
        loss.zero_grad()
        out = loss(x, yy)
        out.loss.backward()
    params_grad = {k: p.grad.clone() for k, p in loss.named_parameters()}
    return {"loss": out.loss.detach(), "h_grad": x.grad.clone(), "params": params_grad}


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for index, (name, params, n0, n1) in enumerate(CASES):
        h, y = global_batch(n0, n1)
        rows = slice(0, n0) if rank == 0 else slice(n0, n0 + n1)
        for negatives in ("global", "local"):
            res = run_case(name, params | {"negatives": negatives}, h[rows], y[rows])
            # what DDP does: average parameter gradients over workers; the encoder sees the
            # feature gradient scaled by 1/world (its parameter gradients are averaged too)
            for grad in res["params"].values():
                dist.all_reduce(grad)
                grad /= WORLD
            padded = torch.zeros(max(n0, n1), D)  # all_gather needs equal shapes
            padded[: res["h_grad"].shape[0]] = res["h_grad"] / WORLD
            gathered = [torch.zeros_like(padded) for _ in range(WORLD)]
            dist.all_gather(gathered, padded)
            loss_sum = res["loss"].clone()
            dist.all_reduce(loss_sum)
            results[(index, negatives)] = {
                "h_grad": torch.cat([gathered[0][:n0], gathered[1][:n1]]),
                "params": res["params"],
                "loss": loss_sum / WORLD,
            }
    # fp prototypes: each worker streams its shard in batches of a different size
    gen = torch.Generator().manual_seed(SEED + 1)
    z, labels = torch.randn(50, D, generator=gen), torch.randint(0, K, (50,), generator=gen)
    acc = ClassMeanAccumulator(K, D)
    shard = torch.arange(50)[rank::2]
    for part in shard.split(3 + 4 * rank):
        acc.update(z[part], labels[part])
    results["class_means"] = acc.means()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.parametrize("index", range(len(CASES)))
def test_global_pool_matches_single_process(worker_results: list[dict], index: int) -> None:
    name, params, n0, n1 = CASES[index]
    h, y = global_batch(n0, n1)
    single = run_case(name, params, h, y)
    for rank_result in worker_results:
        dist_global = rank_result[(index, "global")]
        torch.testing.assert_close(dist_global["h_grad"], single["h_grad"], rtol=1e-5, atol=1e-6)
        for key, grad in single["params"].items():
            torch.testing.assert_close(dist_global["params"][key], grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dist_global["loss"], single["loss"], rtol=1e-5, atol=1e-6)
        # per-worker pools see fewer negatives: a different gradient
        dist_local = rank_result[(index, "local")]
        assert not torch.allclose(dist_local["h_grad"], single["h_grad"], rtol=1e-3, atol=1e-5)


@pytest.mark.distributed
def test_fixed_prototypes_are_exact_class_means(worker_results: list[dict]) -> None:
    gen = torch.Generator().manual_seed(SEED + 1)
    z, labels = torch.randn(50, D, generator=gen), torch.randint(0, K, (50,), generator=gen)
    z = torch.nn.functional.normalize(z, dim=1)
    exact = torch.stack([z[labels == c].mean(0) for c in range(K)])
    for rank_result in worker_results:
        torch.testing.assert_close(rank_result["class_means"], exact, rtol=1e-6, atol=1e-6)
    single = ClassMeanAccumulator(K, D)
    for part in torch.arange(50).split(7):
        single.update(z[part] * 3.0, labels[part])  # normalises: the scale does not matter
    torch.testing.assert_close(single.means(), exact, rtol=1e-6, atol=1e-6)
