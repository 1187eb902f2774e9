"""Paper 004's NC1-NC3 (Zhou et al. 2022): `nc1` is its NC1 (full pseudo-inverse), `nc2_zhou`
and `nc3_zhou` its NC2/NC3, against a hand computation, at a collapsed configuration, and where
they differ from the centred `nc2_etf_dist_weights` and from `nc3`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncstudy.losses.etf import simplex_etf
from ncstudy.metrics import NCAccumulator, compute_nc_metrics


def metrics(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    k, d = w.shape
    acc = NCAccumulator(k, d)
    acc.update(torch.tensor(h, dtype=torch.float64), torch.tensor(y))
    return compute_nc_metrics(acc.statistics(), torch.tensor(w, dtype=torch.float64))


def test_hand_computed_two_class_example() -> None:
    # W = [[1, 0], [0, 0]], class means (2, 0) and (0, 0), global mean (1, 0):
    # W W^T = diag(1, 0) against E = [[1/2, -1/2], [-1/2, 1/2]]: distance 1.
    # W H_bar = [[1, -1], [0, 0]] / sqrt(2) against E: distance^2 = 2 (1/sqrt2 - 1/2)^2 + 1/2
    h = np.array([[2.0, 0], [2.0, 0], [0, 0], [0, 0]])
    y = np.array([0, 0, 1, 1])
    m = metrics(h, y, np.array([[1.0, 0], [0, 0]]))
    assert m["nc2_zhou"] == pytest.approx(1.0, abs=1e-12)
    assert m["nc3_zhou"] == pytest.approx(math.sqrt(2 - math.sqrt(2)), abs=1e-12)


def test_zero_at_neural_collapse_and_scale_free() -> None:
    k, d, n = 5, 8, 3
    w = simplex_etf(d, k, seed=1).double().numpy()  # (K, d) unit-norm, centred rows
    y = np.repeat(np.arange(k), n)
    h = 3.0 * w[y] + np.linspace(0, 1, d)  # self-dual, collapsed, shifted by a global mean
    m = metrics(h, y, 0.2 * w)
    assert m["nc2_zhou"] == pytest.approx(0.0, abs=1e-7)
    assert m["nc3_zhou"] == pytest.approx(0.0, abs=1e-7)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)


def test_nc2_zhou_does_not_centre_the_classifier_rows() -> None:
    k, d = 4, 6
    w = simplex_etf(d, k, seed=0).double().numpy() + 0.7  # an ETF plus a common row
    y = np.repeat(np.arange(k), 2)
    m = metrics(w[y], y, w)
    assert m["nc2_etf_dist_weights"] == pytest.approx(0.0, abs=1e-7)  # centred: an ETF
    gram = w @ w.T
    etf = (np.eye(k) - 1 / k) / math.sqrt(k - 1)
    assert m["nc2_zhou"] == pytest.approx(np.linalg.norm(gram / np.linalg.norm(gram) - etf))
    assert m["nc2_zhou"] > 0.1


def test_nc3_zhou_differs_from_nc3_and_nc1_is_the_full_pseudo_inverse() -> None:
    rng = np.random.default_rng(0)
    k, d, n = 4, 7, 30
    y = np.repeat(np.arange(k), n)
    h = rng.normal(size=(k, d))[y] * 2 + rng.normal(size=(k * n, d))
    w = rng.normal(size=(k, d))
    m = metrics(h, y, w)
    mu = np.stack([h[y == c].mean(0) for c in range(k)])
    hbar = (mu - h.mean(0)).T  # d x K
    prod = w @ hbar
    etf = (np.eye(k) - 1 / k) / math.sqrt(k - 1)
    assert m["nc3_zhou"] == pytest.approx(np.linalg.norm(prod / np.linalg.norm(prod) - etf))
    assert m["nc3_zhou"] != pytest.approx(m["nc3"], rel=1e-2)
    sigma_w = (h - mu[y]).T @ (h - mu[y]) / len(y)  # (1/(nK)) sum, the paper's Sigma_W
    sigma_b = hbar @ hbar.T / k
    assert m["nc1"] == pytest.approx(np.trace(sigma_w @ np.linalg.pinv(sigma_b)) / k, rel=1e-8)
