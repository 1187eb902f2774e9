"""Global-pool equivalence: 2 gloo workers on two parts of a batch give, after DDP-style gradient
averaging, the gradients of one process on the whole batch (and differ with negatives: local);
fixed prototypes set by the trainer's metrics pass (nc_pass) are the exact class means whatever
the number of workers or the batch size; under DDP each worker keeps its own queue."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ncstudy.evaluate.passes import nc_pass, shard_loader
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
    # fp prototypes: the trainer's training-set pass, each worker in batches of its own size
    encoder, criterion, data = prototype_setup()
    loader = shard_loader(data, rank, WORLD, batch_size=3 + 4 * rank)
    nc_pass(encoder, criterion, loader, K, torch.device("cpu"), K, set_prototypes=True)
    results["prototypes"] = criterion.prototypes.clone()
    results["queues"] = ddp_queues(rank)
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


def prototype_setup() -> tuple[nn.Module, nn.Module, TensorDataset]:
    """A fixed encoder, a supcon loss with its projection head, and a 50-sample training set."""
    gen = torch.Generator().manual_seed(SEED + 1)
    x, labels = torch.randn(50, 5, generator=gen), torch.randint(0, K, (50,), generator=gen)
    encoder = nn.Linear(5, D)
    with torch.no_grad():
        encoder.weight.copy_(torch.randn(D, 5, generator=gen))
        encoder.bias.copy_(torch.randn(D, generator=gen))
    criterion = build_loss("supcon", {"projection_dim": 4}, feature_dim=D, num_classes=K, seed=2)
    return encoder, criterion, TensorDataset(x, labels)


def exact_prototypes() -> torch.Tensor:
    """Normalised class means of the normalised projections over the whole set, in float64."""
    encoder, criterion, data = prototype_setup()
    x, labels = data.tensors
    with torch.no_grad():
        z = F.normalize(criterion.embed(encoder(x)).double(), dim=1)
    means = torch.stack([z[labels == c].mean(0) for c in range(K)])
    return F.normalize(means, dim=1)


@pytest.mark.distributed
def test_fixed_prototypes_are_the_exact_class_means(worker_results: list[dict]) -> None:
    exact = exact_prototypes().float()
    for rank_result in worker_results:
        torch.testing.assert_close(rank_result["prototypes"], exact, rtol=1e-6, atol=1e-6)
    for batch_size in (7, 50):  # one process, any batch size
        encoder, criterion, data = prototype_setup()
        assert not bool(criterion.has_prototypes)
        loader = shard_loader(data, 0, 1, batch_size)
        nc_pass(encoder, criterion, loader, K, torch.device("cpu"), K, set_prototypes=True)
        torch.testing.assert_close(criterion.prototypes, exact, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- queues under DDP

QUEUE_STEPS, QUEUE_ROWS = 3, 2


class QueueNet(nn.Module):
    """Encoder and loss as one DDP unit, as the trainer wraps them."""

    def __init__(self, negatives: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(4, D)
        params = {"queue_size": 16, "negatives": negatives}
        self.criterion = build_loss("ntce", params, feature_dim=D, num_classes=K)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        return self.criterion(self.encoder(x), y)


def queue_batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of worker `rank` at `step`, with labels that say whose and when."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    y = torch.tensor([(rank + step) % K, (rank + step + 1) % K])
    return torch.randn(QUEUE_ROWS, 4, generator=gen), y


def ddp_queues(rank: int) -> dict[str, dict[str, torch.Tensor]]:
    """Each worker's queue after QUEUE_STEPS DDP steps, and the rows it fed the loss."""
    out = {}
    for negatives in ("local", "global"):
        net = nn.parallel.DistributedDataParallel(QueueNet(negatives))
        fed = []
        for step in range(QUEUE_STEPS):
            x, y = queue_batch(rank, step)
            with torch.no_grad():
                fed.append(F.normalize(net.module.encoder(x), dim=1))
            net.zero_grad()
            net(x, y).loss.backward()
            with torch.no_grad():  # a plain SGD step, the same on every worker
                for p in net.parameters():
                    p -= 0.1 * p.grad
        z, y = net.module.criterion.queue.contents()
        out[negatives] = {"z": z, "y": y, "fed": torch.stack(fed)}
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("negatives", ["local", "global"])
def test_each_worker_keeps_its_own_queue_under_ddp(
    worker_results: list[dict], negatives: str
) -> None:
    """DDP broadcasts buffers from rank 0 before each forward: the queue must not be one, or
    every worker would contrast against rank 0's history (local) and resend it every step."""
    fed = [r["queues"][negatives]["fed"] for r in worker_results]  # (steps, rows, D) per rank
    for rank, rank_result in enumerate(worker_results):
        got = rank_result["queues"][negatives]
        ranks = [rank] if negatives == "local" else list(range(len(worker_results)))
        steps = range(QUEUE_STEPS)
        expected_y = torch.cat([queue_batch(r, step)[1] for step in steps for r in ranks])
        expected_z = torch.cat([fed[r][step] for step in steps for r in ranks])
        assert torch.equal(got["y"], expected_y)  # oldest first; only this worker's (local)
        torch.testing.assert_close(got["z"], expected_z)
