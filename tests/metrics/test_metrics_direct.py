"""Every metric equals a direct computation from the full feature matrix; streaming is exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ncstudy.metrics import METRIC_NAMES, NCAccumulator, compute_nc_metrics


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)


def _erank_of_cov(rows: np.ndarray) -> float:
    cov = np.cov(rows, rowvar=False, bias=True)
    s = np.linalg.svd(cov, compute_uv=False)
    p = s[s > 0] / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def _pairs(g: np.ndarray) -> np.ndarray:
    return g[np.triu_indices(g.shape[0], 1)]


def _entropy(g: np.ndarray) -> float:
    lam = np.clip(np.linalg.eigvalsh(g / g.shape[0]), 1e-10, None)
    return float(-(lam * np.log(lam)).sum())


def _mir_hdr(w: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    gw, gm = w @ w.T, v @ v.T
    hw, hm = _entropy(gw), _entropy(gm)
    return (hw + hm - _entropy(gw * gm)) / min(hw, hm), abs(hw - hm) / max(hw, hm)


def _brute_force_ovr(w: np.ndarray) -> float:
    """min_k dist(w^_k, conv(others)) by enumerating every support of size <= d+1."""
    u = _unit(w)
    k, d = u.shape
    best = np.inf
    for c in range(k):
        others = np.delete(u, c, axis=0)
        dist = np.inf
        for size in range(1, min(d + 1, k - 1) + 1):
            for sub in itertools.combinations(range(k - 1), size):
                y = others[list(sub)] - u[c]
                kkt = np.block([[y @ y.T, np.ones((size, 1))], [np.ones((1, size)), 0]])
                sol = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
                if sol.min() >= -1e-12:
                    dist = min(dist, float(np.linalg.norm(sol @ y)))
        best = min(best, dist)
    return best


def direct_metrics(h: np.ndarray, y: np.ndarray, pred: np.ndarray, w: np.ndarray) -> dict:
    """The spec definitions written out on the full N x d matrix (all classes present)."""
    k = w.shape[0]
    n = len(y)
    mu = np.stack([h[y == c].mean(0) for c in range(k)])
    mu_g = h.mean(0)
    mt = mu - mu_g

    def nc1_of(x: np.ndarray) -> float:
        m = np.stack([x[y == c].mean(0) for c in range(k)])
        sw = (x - m[y]).T @ (x - m[y]) / n
        mc = m - x.mean(0)
        sb = mc.T @ mc / k
        ev, vec = np.linalg.eigh(sb)
        top = np.argsort(ev)[::-1][: min(k - 1, x.shape[1])]
        inv = vec[:, top] @ np.diag(1 / ev[top]) @ vec[:, top].T
        return float(np.trace(sw @ inv) / k)

    z = _unit(h)
    zmean = np.stack([z[y == c].mean(0) for c in range(k)])
    mu_hat = _unit(zmean)
    w_hat = _unit(w)
    cos_m, cos_w = _unit(mt) @ _unit(mt).T, w_hat @ w_hat.T
    wc = w - w.mean(0)
    etf = (np.eye(k) - 1 / k) / np.sqrt(k - 1)
    norms_m, norms_w = np.linalg.norm(mt, axis=1), np.linalg.norm(w, axis=1)
    nearest = np.argmin(((h[:, None, :] - mu[None]) ** 2).sum(-1), axis=1)
    cos_wm = (w * mt).sum(1) / (norms_w * norms_m)
    out = {
        "nc1": nc1_of(h),
        "gnc1": nc1_of(z),
        "nc2_equinorm_means": norms_m.std(ddof=1) / norms_m.mean(),
        "nc2_equinorm_weights": norms_w.std(ddof=1) / norms_w.mean(),
        "nc2_equiangle_means": _pairs(cos_m).std(ddof=1),
        "nc2_equiangle_weights": _pairs(cos_w).std(ddof=1),
        "nc2_maxangle_means": np.abs(_pairs(cos_m) + 1 / (k - 1)).mean(),
        "nc2_maxangle_weights": np.abs(_pairs(cos_w) + 1 / (k - 1)).mean(),
        "nc2_etf_dist_means": np.linalg.norm((g := mt @ mt.T) / np.linalg.norm(g) - etf),
        "nc2_etf_dist_weights": np.linalg.norm((g := wc @ wc.T) / np.linalg.norm(g) - etf),
        "nc3": ((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2).sum(),
        "nc3_cos": cos_wm.mean(),
        "gnc3": (1 - (w_hat * zmean).sum(1)).mean(),  # Jiang et al.: normalised features
        "gnc3_centred": (1 - cos_wm).mean(),
        "nc4": float((nearest != pred).mean()),
        "erank_intra": np.mean([_erank_of_cov(z[y == c]) for c in range(k)]),
        "erank_inter": _erank_of_cov(zmean),
        "erank_weights": _erank_of_cov(w_hat),
        "align_weight_mean": ((w_hat - mu_hat) ** 2).sum(1).mean(),
        "align_weight_inst": ((w_hat[y] - z) ** 2).sum(1).mean(),
        "align_inst_mean": ((z - mu_hat[y]) ** 2).sum(1).mean(),
        "max_cos_weights": _pairs(cos_w).max(),
        "gnc2": _brute_force_ovr(w),
        "nc2_zhou": np.linalg.norm((g := w @ w.T) / np.linalg.norm(g) - etf),
        "nc3_zhou": np.linalg.norm((g := w @ mt.T) / np.linalg.norm(g) - etf),
    }
    # Yaras et al.'s uncentred forms: the raw class means mu, not mu - mu_G
    out["nc2_uncentred_means"] = np.linalg.norm((g := mu @ mu.T) / np.linalg.norm(g) - etf)
    out["nc2_uncentred_weights"] = np.linalg.norm((g := w @ w.T) / np.linalg.norm(g) - etf)
    out["nc3_uncentred"] = ((w / np.linalg.norm(w) - mu / np.linalg.norm(mu)) ** 2).sum()
    out["mir"], out["hdr"] = _mir_hdr(w_hat, _unit(mu_hat - mu_hat.mean(0)))
    out["mir_paper"], out["hdr_paper"] = _mir_hdr(w_hat, _unit(mu_hat - _unit(z.mean(0))))
    return out


def random_problem(k: int, d: int, n: int, seed: int):
    """Clustered random features (float32, as a model emits), labels, predictions, weights."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 2
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    h = (centres[y] + rng.normal(size=(n, d)) + 0.5).astype(np.float32)
    pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
    w = rng.normal(size=(k, d))
    return h, y, pred, w


@pytest.mark.parametrize(("k", "d", "n"), [(6, 12, 400), (7, 3, 300), (5, 4, 250)])
def test_metrics_equal_direct_computation(k: int, d: int, n: int) -> None:
    h, y, pred, w = random_problem(k, d, n, seed=k * d)
    acc = NCAccumulator(k, d)
    acc.update(torch.from_numpy(h), torch.from_numpy(y), torch.from_numpy(pred))
    got = compute_nc_metrics(acc.statistics(), torch.from_numpy(w))
    want = direct_metrics(h.astype(np.float64), y, pred, w)
    assert set(got) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], rel=1e-8, abs=1e-10), name


def test_streaming_matches_one_pass() -> None:
    k, d, n = 8, 10, 1000
    h, y, pred, w = random_problem(k, d, n, seed=1)
    ht, yt, pt, wt = map(torch.from_numpy, (h, y, pred, w))
    one = NCAccumulator(k, d, max_intra_classes=5)
    one.update(ht, yt, pt)
    # A tiny buffer exercises the mid-stream flushes of the per-class scatter.
    streamed = NCAccumulator(k, d, max_intra_classes=5, scatter_buffer_rows_per_class=2)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, n), size=40, replace=False))
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
        streamed.update(ht[lo:hi], yt[lo:hi], pt[lo:hi])
    a = compute_nc_metrics(one.statistics(), wt)
    b = compute_nc_metrics(streamed.statistics(), wt)
    assert set(a) == set(b) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert b[name] == pytest.approx(a[name], rel=1e-9, abs=1e-12), name


def test_intra_subset_is_deterministic_and_bounded() -> None:
    k, d, n = 30, 6, 600
    h, y, pred, w = random_problem(k, d, n, seed=2)
    acc = NCAccumulator(k, d, max_intra_classes=4)
    acc.update(torch.from_numpy(h), torch.from_numpy(y))
    stats = acc.statistics()
    assert stats.intra_classes.tolist() == [0, 10, 19, 29]
    assert tuple(stats.scatter_normalized.shape) == (4, d, d)
    z = _unit(h.astype(np.float64))
    want = np.mean([_erank_of_cov(z[y == c]) for c in (0, 10, 19, 29)])
    got = compute_nc_metrics(stats, None)
    assert got["erank_intra"] == pytest.approx(want, rel=1e-9)
    # gnc1 still uses the exact pooled second moment of all classes.
    full = NCAccumulator(k, d)
    full.update(torch.from_numpy(h), torch.from_numpy(y))
    assert got["gnc1"] == pytest.approx(compute_nc_metrics(full.statistics())["gnc1"], rel=1e-9)


def test_nc4_reference_means_and_cache_overflow() -> None:
    k, d, n = 6, 5, 300
    h, y, pred, w = random_problem(k, d, n, seed=3)
    ht, yt, pt = map(torch.from_numpy, (h, y, pred))
    first = NCAccumulator(k, d)
    first.update(ht, yt, pt)
    exact = first.statistics()
    assert exact.nc4_source == "exact"
    means = exact.sum_features / exact.counts[:, None]
    # A cache too small for one batch: nc4 comes from the previous pass's means (here the same).
    second = NCAccumulator(k, d, reference_means=means, nc4_cache_bytes=16)
    for chunk in range(0, n, 64):
        second.update(ht[chunk : chunk + 64], yt[chunk : chunk + 64], pt[chunk : chunk + 64])
    ref = second.statistics()
    assert ref.nc4_source == "reference"
    assert ref.nc4_mismatches == exact.nc4_mismatches and ref.nc4_samples == n
    # No cache and no reference: nc4 is omitted, not NaN.
    third = NCAccumulator(k, d, nc4_cache_bytes=16)
    third.update(ht, yt, pt)
    assert "nc4" not in compute_nc_metrics(third.statistics())


def test_degenerate_inputs_are_omitted_not_nan() -> None:
    k, d = 5, 4
    # Class 4 has no samples; features are antipodal so the global mean is exactly zero.
    h = torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]] * 3 + [[0, 2.0, 0, 0], [0, -2.0, 0, 0]])
    y = torch.tensor([0, 1] * 3 + [2, 3])
    acc = NCAccumulator(k, d)
    acc.update(h, y, y)
    w = torch.randn(k, d, dtype=torch.float64)
    w[1] = 0.0  # a dead classifier row
    m = compute_nc_metrics(acc.statistics(), w)
    assert all(np.isfinite(v) for v in m.values())
    assert {"mir_paper", "hdr_paper", "nc1", "gnc2"} <= set(m)
    # Single class and zero features: nothing divides by zero.
    one = NCAccumulator(3, 2)
    one.update(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    m1 = compute_nc_metrics(one.statistics(), torch.zeros(3, 2))
    assert all(np.isfinite(v) for v in m1.values())
    assert "nc1" not in m1 and "nc2_equinorm_means" not in m1 and "gnc2" in m1
    assert compute_nc_metrics(NCAccumulator(3, 2).statistics(), torch.ones(3, 2)) == {}


def test_input_validation_names_the_field() -> None:
    acc = NCAccumulator(3, 4)
    with pytest.raises(ValueError, match="features"):
        acc.update(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        acc.update(torch.zeros(2, 4), torch.tensor([0, 3]))
    acc.update(torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(ValueError, match="weights"):
        compute_nc_metrics(acc.statistics(), torch.zeros(4, 3))


def test_accumulator_is_single_use() -> None:
    acc = NCAccumulator(3, 2)
    # Well-separated classes: the nearest class mean is the label; one prediction is wrong.
    feats = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, -10.0]]).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    acc.update(feats, labels, torch.tensor([0, 1, 2, 0, 1, 1]))
    first = acc.statistics()
    assert acc.statistics().nc4_mismatches == first.nc4_mismatches == 1.0
    with pytest.raises(RuntimeError, match="new NCAccumulator"):
        acc.update(torch.randn(1, 2), torch.tensor([0]))
    with pytest.raises(RuntimeError, match="before statistics"):
        acc.all_reduce()
