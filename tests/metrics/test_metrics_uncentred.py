"""The uncentred NC2/NC3 of Yaras et al. 2022 on configurations whose values are known: zero at
the sphere-inscribed simplex ETF with w_k = mu_k; a shifted ETF is still a centred ETF but not an
uncentred one (the variants differ exactly where the paper's Theorem 1 is stricter)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncstudy.metrics import NCAccumulator, compute_nc_metrics


def simplex(k: int, d: int) -> np.ndarray:
    """K unit rows in R^d with pairwise cosine -1/(K-1) (d >= K)."""
    e = np.eye(k) - 1.0 / k
    rows = e / np.linalg.norm(e, axis=1, keepdims=True)
    return np.pad(rows, ((0, 0), (0, d - k)))


def metrics_of(means: np.ndarray, weights: np.ndarray, n: int = 3) -> dict[str, float]:
    k, d = means.shape
    h = torch.from_numpy(np.repeat(means, n, axis=0))
    y = torch.arange(k).repeat_interleave(n)
    acc = NCAccumulator(k, d)
    acc.update(h, y)
    return compute_nc_metrics(acc.statistics(), torch.from_numpy(weights))


def test_zero_at_the_sphere_inscribed_etf() -> None:
    m = simplex(5, 7)
    got = metrics_of(m, m.copy())
    for name in ("nc2_uncentred_means", "nc2_uncentred_weights", "nc3_uncentred"):
        assert got[name] == pytest.approx(0.0, abs=1e-12), name


def test_a_shifted_etf_is_centred_but_not_uncentred() -> None:
    k, d = 4, 6
    m = simplex(k, d)
    shift = np.zeros(d)
    shift[-1] = 1.0  # orthogonal to the ETF's span: mu_k = e_k' + c
    shifted = m + shift
    got = metrics_of(shifted, shifted.copy())
    assert got["nc2_etf_dist_means"] == pytest.approx(0.0, abs=1e-12)
    assert got["nc3_uncentred"] == pytest.approx(0.0, abs=1e-12)  # W equals the raw means
    # by hand: the Gram of the raw means, against the unit simplex Gram
    g = shifted @ shifted.T
    etf = (np.eye(k) - 1.0 / k) / np.sqrt(k - 1)
    want = np.linalg.norm(g / np.linalg.norm(g) - etf)
    assert want > 0.1
    assert got["nc2_uncentred_means"] == pytest.approx(want, rel=1e-12)
    # W = the centred ETF against the shifted means: nc3 (centred) 0, nc3_uncentred by hand
    got = metrics_of(shifted, m.copy())
    assert got["nc3"] == pytest.approx(0.0, abs=1e-12)
    by_hand = ((m / np.linalg.norm(m) - shifted / np.linalg.norm(shifted)) ** 2).sum()
    assert got["nc3_uncentred"] == pytest.approx(by_hand, rel=1e-12)
    assert by_hand > 0.1
