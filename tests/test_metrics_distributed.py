"""Two gloo workers over parts of the data give the single-process metrics after all_reduce."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ncstudy.metrics import METRIC_NAMES, NCAccumulator, compute_nc_metrics

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
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


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
    for split in ("even", "uneven", "overflow"):
        metrics, source = results[split]
        assert source == ("reference" if split == "overflow" else "exact")
        assert set(metrics) == set(single), split
        for name in METRIC_NAMES:
            assert metrics[name] == pytest.approx(single[name], rel=1e-9, abs=1e-12), (split, name)
    assert np.isfinite(list(single.values())).all()
