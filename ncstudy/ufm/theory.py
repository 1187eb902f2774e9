"""Closed forms and reduced (one-dimensional) problems of the UFM theory (spec/ufm.md).

Pure numpy/scipy, independent of the torch loss implementations, so tests can compare what the
UFM optimiser reaches through `ncstudy.losses` with what theory predicts.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

# Losses the reduced regularised problem knows (the CE family of "Are All Losses Created Equal").
REGULARIZED_LOSSES = ("ce", "ls", "focal", "mse")


def normface_bound(num_classes: int, tau: float) -> float:
    """NormFace's global minimum log(1 + (K-1) exp(-K/((K-1) tau))) for K <= d+1 (Yaras Thm 1)."""
    k = num_classes
    return math.log1p((k - 1) * math.exp(-k / ((k - 1) * tau)))


def ntce_etf_value(num_classes: int, n_per_class: int, tau: float) -> float:
    """NTCE at the simplex ETF with the whole set as the pool: S_ii = 1/tau for the n same-class
    members, -1/((K-1) tau) for the (K-1) n others."""
    k, n = num_classes, n_per_class
    own, other = 1.0 / tau, -1.0 / ((k - 1) * tau)
    return float(logsumexp([own, other], b=[n, (k - 1) * n]) - own)


def nonl_etf_value(num_classes: int, n_per_class: int, tau: float) -> float:
    """NONL at the simplex ETF: the denominator holds only the (K-1) n other-class members."""
    k, n = num_classes, n_per_class
    return math.log((k - 1) * n) - k / ((k - 1) * tau)


def sample_loss(name: str, logits: np.ndarray, params: dict[str, float] | None = None) -> float:
    """Per-sample loss of one logit vector whose true class is index 0 (numpy reference)."""
    p = params or {}
    log_p = logits - logsumexp(logits)
    if name == "ce":
        return float(-log_p[0])
    if name == "ls":
        alpha = p.get("alpha", 0.1)
        return float(-(1 - alpha) * log_p[0] - alpha * log_p.mean())
    if name == "focal":
        gamma = p.get("gamma", 3.0)
        return float(-((-np.expm1(log_p[0])) ** gamma) * log_p[0])
    if name == "mse":
        kappa, beta = p.get("kappa", 1.0), p.get("beta", 15.0)
        return float(kappa * (logits[0] - beta) ** 2 + (logits[1:] ** 2).sum())
    raise ValueError(f"no reduced problem for loss {name!r}; valid: {REGULARIZED_LOSSES}")


def regularized_reduced_objective(
    name: str,
    energy: float,
    *,
    num_classes: int,
    n_per_class: int,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float,
    params: dict[str, float] | None = None,
) -> float:
    """The regularised UFM objective restricted to simplex-ETF solutions, as a function of
    E = <w_k, h_k>: own logit E, others -E/(K-1), a common bias b minimised out (only `mse` is
    not shift-invariant), penalty K sqrt(n lambda_W lambda_H) E (balanced W/H norms)."""
    k = num_classes
    base = np.full(k, -energy / (k - 1))
    base[0] = energy

    def with_bias(b: float) -> float:
        return sample_loss(name, base + b, params) + lambda_b / 2 * k * b * b

    if name == "mse":  # not shift-invariant: the optimal common bias is not zero
        data = minimize_scalar(
            with_bias, bounds=(-1e3, 1e3), method="bounded", options={"xatol": 1e-12}
        ).fun
    else:  # softmax losses: b = 0 is optimal (and free when lambda_b = 0)
        data = with_bias(0.0)
    return float(data + k * math.sqrt(n_per_class * lambda_w * lambda_h) * energy)


def regularized_optimum(
    name: str,
    *,
    num_classes: int,
    n_per_class: int,
    lambda_w: float,
    lambda_h: float,
    lambda_b: float,
    params: dict[str, float] | None = None,
    max_energy: float = 1e3,
) -> tuple[float, float]:
    """(E*, objective*) of the reduced one-dimensional problem (grid scan, then a bounded solve
    around the best grid point, so a non-convex reduced objective is handled)."""

    def f(e: float) -> float:
        return regularized_reduced_objective(
            name,
            e,
            num_classes=num_classes,
            n_per_class=n_per_class,
            lambda_w=lambda_w,
            lambda_h=lambda_h,
            lambda_b=lambda_b,
            params=params,
        )

    grid = np.concatenate([[0.0], np.geomspace(1e-4, max_energy, 400)])
    values = [f(e) for e in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    if hi <= lo:
        return float(grid[i]), float(values[i])
    res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    if res.fun <= values[i]:
        return float(res.x), float(res.fun)
    return float(grid[i]), float(values[i])


def feature_weight_ratio(n_per_class: int, lambda_w: float, lambda_h: float) -> float:
    """h_{k,i} = c w_k at the regularised optimum, c = sqrt(lambda_W / (lambda_H n))."""
    return math.sqrt(lambda_w / (lambda_h * n_per_class))
