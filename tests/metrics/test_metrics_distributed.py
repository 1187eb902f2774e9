"""Two gloo workers over parts of the data give the single-process metrics after all_reduce:
with even and uneven shards, with the statistics reduced in small in-place chunks, with a
worker whose nc4 cache overflows, and with a worker whose shard of a metrics pass is empty."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import TensorDataset

from ncstudy.metrics import METRIC_NAMES, NCAccumulator, compute_nc_metrics
from ncstudy.metrics import stats as stats_module

K, D, N = 7, 6, 600
SPLITS = {"even": N // 2, "uneven": 137}


def _data():
    """Deterministic float32 features, labels, predictions and float64 weights."""
    g = torch.Generator().manual_seed(11)
    labels = torch.cat([torch.arange(K), torch.randint(0, K, (N - K,), generator=g)])
    centres = 3 * torch.randn(K, D, generator=g)
    feats = (centres[labels] + torch.randn(N, D, generator=g)).float()
    preds = torch.where(
        torch.rand(N, generator=g) < 0.7, labels, torch.randint(0, K, (N,), generator=g)
    )
    weights = torch.randn(K, D, generator=g, dtype=torch.float64)
    return feats, labels, preds, weights


def _accumulate(feats, labels, preds, lo: int, hi: int, batch: int, **kw) -> NCAccumulator:
    acc = NCAccumulator(K, D, max_intra_classes=4, **kw)
    for start in range(lo, hi, batch):
        stop = min(start + batch, hi)
        acc.update(feats[start:stop], labels[start:stop], preds[start:stop])
    return acc


CHUNK = 50  # elements per all_reduce call in the "chunked" case


def _worker(rank: int, port: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        feats, labels, preds, weights = _data()
        results = {}
        for name, cut in SPLITS.items():
            lo, hi = (0, cut) if rank == 0 else (cut, N)
            acc = _accumulate(feats, labels, preds, lo, hi, batch=17 + 40 * rank)
            acc.all_reduce()
            stats = acc.statistics()
            results[name] = (compute_nc_metrics(stats, weights), stats.nc4_source)
        # Chunked, in place: no all_reduce call sees more than CHUNK elements of a large
        # statistic, and each writes into the accumulator's own storage (no flat copy).
        acc = _accumulate(feats, labels, preds, *((0, 300) if rank == 0 else (300, N)), batch=50)
        own = {t.untyped_storage().data_ptr() for t in _large(acc)}
        calls = []
        real = dist.all_reduce

        def spy(tensor, *args, **kwargs):
            calls.append((tensor.numel(), tensor.untyped_storage().data_ptr()))
            return real(tensor, *args, **kwargs)

        stats_module.REDUCE_CHUNK_ELEMENTS, dist.all_reduce = CHUNK, spy
        try:
            acc.all_reduce()
        finally:
            stats_module.REDUCE_CHUNK_ELEMENTS, dist.all_reduce = 1 << 24, real
        stats = acc.statistics()
        results["chunked"] = (compute_nc_metrics(stats, weights), stats.nc4_source)
        results["calls"] = (calls, own)
        # Rank 1's nc4 cache overflows: both ranks must fall back to the reference means.
        means = torch.stack([feats[labels == c].double().mean(0) for c in range(K)])
        lo, hi = (0, 300) if rank == 0 else (300, N)
        budget = 1 << 20 if rank == 0 else 64
        acc = _accumulate(
            feats, labels, preds, lo, hi, batch=50, reference_means=means, nc4_cache_bytes=budget
        )
        acc.all_reduce()
        stats = acc.statistics()
        results["overflow"] = (compute_nc_metrics(stats, weights), stats.nc4_source)
        results["empty_shard"] = _empty_shard_pass(rank, feats, labels)
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _large(acc: NCAccumulator) -> list[torch.Tensor]:
    """The statistics that are reduced in place."""
    return [
        acc.sum_features,
        acc.sum_normalized,
        acc.shifted_sum,
        acc.shifted_sum_normalized,
        acc.scatter,
        acc._scatter_normalized_untracked,
        acc.scatter_normalized,
    ]


def _empty_shard_pass(rank: int, feats: torch.Tensor, labels: torch.Tensor):
    """nc_pass and gather_features where rank 1's shard is empty (it must contribute zeros and
    join every collective instead of raising while rank 0 waits)."""
    from ncstudy.evaluate.passes import gather_features, nc_pass, shard_loader
    from ncstudy.losses import build_loss

    data = TensorDataset(feats, labels) if rank == 0 else TensorDataset(feats[:0], labels[:0])
    loader = shard_loader(data, 0, 1, 64)
    crit = build_loss("ce", {}, feature_dim=D, num_classes=K, seed=0)
    result = nc_pass(torch.nn.Identity(), crit, loader, K, torch.device("cpu"), 4)
    gathered = gather_features(torch.nn.Identity(), loader, torch.device("cpu"))
    return (result.metrics, result.nc4_source), gathered


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_gloo_workers_match_one_process(tmp_path) -> None:
    out = tmp_path / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out)
    feats, labels, preds, weights = _data()
    single = compute_nc_metrics(
        _accumulate(feats, labels, preds, 0, N, batch=N).statistics(), weights
    )
    assert set(single) == set(METRIC_NAMES)
    for split in ("even", "uneven", "chunked", "overflow"):
        metrics, source = results[split]
        assert source == ("reference" if split == "overflow" else "exact")
        assert set(metrics) == set(single), split
        for name in METRIC_NAMES:
            assert metrics[name] == pytest.approx(single[name], rel=1e-9, abs=1e-12), (split, name)
    assert np.isfinite(list(single.values())).all()
    calls, own = results["calls"]
    large = [(n, ptr) for n, ptr in calls if ptr in own]
    assert large and max(n for n, _ in large) == CHUNK  # chunked, into the statistics' storage
    assert all(n <= max(CHUNK, 2 * K + 3) for n, _ in calls)  # plus one small packed call

    from ncstudy.evaluate.passes import nc_pass, shard_loader
    from ncstudy.losses import build_loss

    crit = build_loss("ce", {}, feature_dim=D, num_classes=K, seed=0)
    loader = shard_loader(TensorDataset(feats, labels), 0, 1, 64)
    expected = nc_pass(torch.nn.Identity(), crit, loader, K, torch.device("cpu"), 4)
    (metrics, source), (gathered, gathered_labels) = results["empty_shard"]
    assert source == "exact" and set(metrics) == set(expected.metrics)
    for name, value in expected.metrics.items():
        assert metrics[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert torch.equal(gathered, feats) and torch.equal(gathered_labels, labels)
