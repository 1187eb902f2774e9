"""Near total collapse the feature metrics keep their digits (issue: uncentred second moments
lost them): class means at a common offset of 0, 10 and 100 with a within-class spread down to
1e-9 of the offset, against numpy on the centred float64 data. Streaming in batches and
splitting the data over two gloo workers give the same numbers."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ncstudy.metrics import NCAccumulator, compute_nc_metrics

K, D, PER_CLASS = 5, 16, 200
CASES = [(0.0, 1e-6), (10.0, 1e-6), (10.0, 1e-8), (100.0, 1e-7)]  # (offset, spread)
CHECKED = ("nc1", "gnc1", "erank_intra", "align_inst_mean", "align_weight_inst")


def collapsed_data(offset: float, spread: float, seed: int = 0):
    """float64 features: K class means offset * 1/sqrt(d) + a unit direction, plus within-class
    noise of scale `spread` with a decaying spectrum (erank about 11 for z, of rank d - 1);
    labels; weights."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(K, D))
    means = offset / np.sqrt(D) + directions / np.linalg.norm(directions, axis=1, keepdims=True)
    labels = np.repeat(np.arange(K), PER_CLASS)
    rng.shuffle(labels)
    scales = np.linspace(1.0, 0.2, D)
    noise = rng.normal(size=(len(labels), D)) * scales @ np.linalg.qr(rng.normal(size=(D, D)))[0]
    weights = means + 0.1 * rng.normal(size=(K, D))
    return means[labels] + spread * noise, labels, weights


def _erank(spectrum: np.ndarray) -> float:
    p = spectrum[spectrum > 0] / spectrum.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _nc1(x: np.ndarray, y: np.ndarray) -> float:
    means = np.stack([x[y == c].mean(0) for c in range(K)])
    centred = x - means[y]  # the within-class deviations, exactly as numpy subtracts them
    sigma_w = centred.T @ centred / len(y)
    mt = means - x.mean(0)
    ev, vec = np.linalg.eigh(mt.T @ mt / K)
    ev, vec = ev[-(K - 1) :], vec[:, -(K - 1) :]
    return float(np.trace(sigma_w @ (vec / ev) @ vec.T) / K)


def reference(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    """The spec's definitions on the full matrix, in float64 numpy (z from the same torch
    normalisation as the metrics use, so both start from identical unit rows)."""
    z = F.normalize(torch.from_numpy(h), dim=1).numpy()
    intra = []
    for c in range(K):
        rows = z[y == c]
        s = np.linalg.svd(rows - rows.mean(0), compute_uv=False)
        intra.append(_erank(s * s / len(rows)))
    zmeans = np.stack([z[y == c].mean(0) for c in range(K)])
    mu_hat = zmeans / np.linalg.norm(zmeans, axis=1, keepdims=True)
    w_hat = w / np.linalg.norm(w, axis=1, keepdims=True)
    return {
        "nc1": _nc1(h, y),
        "gnc1": _nc1(z, y),
        "erank_intra": float(np.mean(intra)),
        "align_inst_mean": float(((z - mu_hat[y]) ** 2).sum(1).mean()),
        "align_weight_inst": float(((z - w_hat[y]) ** 2).sum(1).mean()),
    }


def streamed(h: np.ndarray, y: np.ndarray, w: np.ndarray, batch: int) -> dict[str, float]:
    acc = NCAccumulator(K, D)
    for start in range(0, len(y), batch):
        sl = slice(start, start + batch)
        acc.update(torch.from_numpy(h[sl]), torch.from_numpy(y[sl]))
    return compute_nc_metrics(acc.statistics(), torch.from_numpy(w))


@pytest.mark.parametrize(("offset", "spread"), CASES)
def test_metrics_keep_their_digits_near_collapse(offset: float, spread: float) -> None:
    h, y, w = collapsed_data(offset, spread)
    want = reference(h, y, w)
    assert want["erank_intra"] > 10  # a residual of rank d - 1 (z is on the sphere), however small
    for batch in (len(y), 64):
        got = streamed(h, y, w, batch)
        for name in CHECKED:
            assert got[name] == pytest.approx(want[name], rel=1e-9), (offset, spread, batch, name)
        assert got["nc1"] > 0 and got["gnc1"] > 0


def _worker(rank: int, port: int, out_path: str, offset: float, spread: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        h, y, w = collapsed_data(offset, spread)
        cut = 377
        lo, hi = (0, cut) if rank == 0 else (cut, len(y))
        acc = NCAccumulator(K, D, max_intra_classes=3)
        for start in range(lo, hi, 50):
            stop = min(start + 50, hi)
            acc.update(torch.from_numpy(h[start:stop]), torch.from_numpy(y[start:stop]))
        acc.all_reduce()
        if rank == 0:
            torch.save(compute_nc_metrics(acc.statistics(), torch.from_numpy(w)), out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_workers_near_collapse_at_offset_100(tmp_path) -> None:
    """Each worker shifts by its own first rows; the all-reduce moves them to the global means."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "metrics.pt"
    mp.spawn(_worker, args=(port, str(out), 100.0, 1e-7), nprocs=2, join=True)
    got = torch.load(out)
    h, y, w = collapsed_data(100.0, 1e-7)
    acc = NCAccumulator(K, D, max_intra_classes=3)
    acc.update(torch.from_numpy(h), torch.from_numpy(y))
    single = compute_nc_metrics(acc.statistics(), torch.from_numpy(w))
    want = reference(h, y, w)
    for name in ("nc1", "gnc1", "align_inst_mean", "align_weight_inst"):
        assert got[name] == pytest.approx(want[name], rel=1e-9), name
    assert got["erank_intra"] == pytest.approx(single["erank_intra"], rel=1e-9)
