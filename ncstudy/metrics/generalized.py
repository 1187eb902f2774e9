"""Generalised NC for K > d+1 (Jiang et al.): gnc1..gnc3 and the Tammes max cosine.

`gnc2` is the one-vs-rest margin rho(W) = min_k dist(w^_k, conv{w^_j : j != k}); each distance is
the minimum-norm point of a polytope, solved exactly (a finite active-set method, Wolfe 1976) as a
QP over the simplex in the Gram matrix of the points, so d never enters the per-class cost.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from ncstudy.metrics._linalg import cosine_matrix, off_diagonal, safe_normalize
from ncstudy.metrics.classical import nc1, row_cosines

GAP_TOL = 1e-12  # optimality gap, relative to the largest squared point norm
# A returned point must be certified: its gap (relative) at most this. Frank-Wolfe duality bounds
# the excess squared distance by 2 x gap, so 1e-9 leaves gnc2 exact to far below reporting
# precision while tolerating round-off that stops Wolfe's loop above GAP_TOL.
ACCEPT_TOL = 1e-9
WEIGHT_TOL = 1e-10  # barycentric weights at or below this leave the active set


def gnc1(counts: Tensor, sum_normalized: Tensor, second_moment_normalized: Tensor) -> float | None:
    """nc1 on the L2-normalised features."""
    return nc1(counts, sum_normalized, second_moment_normalized)


def gnc3(weights: Tensor, centred_means: Tensor) -> float | None:
    """(1/K) sum_k (1 - cos(w_k, mu_k - mu_G)) over the classes present."""
    if weights.shape[0] == 0:
        return None
    return float((1.0 - row_cosines(weights, centred_means)).mean())


def max_cos_weights(weights: Tensor) -> float | None:
    """max over j != k of cos(w_j, w_k) (the Tammes objective)."""
    if weights.shape[0] < 2:
        return None
    return float(off_diagonal(cosine_matrix(weights)).max())


class SolverNotOptimal(RuntimeError):
    """The min-norm-point QP stopped without a certified optimum (its gap is too large)."""


def gnc2(weights: Tensor) -> float | None:
    """rho_ovr(W): min over k of the distance from w^_k to the hull of the other unit rows.

    None (the metric is omitted) with a RuntimeWarning if any per-class QP is not certified
    optimal: an uncertified distance is only an upper bound, not the metric.
    """
    k = weights.shape[0]
    if k < 2:
        return None
    unit = safe_normalize(weights.to(torch.float64)).cpu().numpy()
    gram = unit @ unit.T
    # The QPs are small: BLAS threads only add overhead (and contention on a busy node).
    rank = int(np.linalg.matrix_rank(unit)) if unit.any() else 0
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            return min(one_vs_rest_distance(gram, c, rank) for c in range(k))
    except SolverNotOptimal as err:
        warnings.warn(f"gnc2 omitted: {err}", RuntimeWarning, stacklevel=2)
        return None


def one_vs_rest_distance(gram: np.ndarray, k: int, rank: int) -> float:
    """dist(p_k, conv{p_j : j != k}) given the Gram matrix of the points p (of rank `rank`)."""
    others = np.delete(np.arange(gram.shape[0]), k)
    cross = gram[others, k]
    # Gram of the shifted points y_j = p_j - p_k.
    q = gram[np.ix_(others, others)] - cross[:, None] - cross[None, :] + gram[k, k]
    weights = simplex_min_norm(q, warm_start=gram.shape[0] <= rank + 1)
    return float(np.sqrt(max(weights @ q @ weights, 0.0)))


def simplex_min_norm(
    q: np.ndarray, warm_start: bool = True, max_iter: int | None = None
) -> np.ndarray:
    """argmin over the simplex of a^T Q a, for Q the Gram of points y_j (min-norm point).

    With `warm_start` (for K <= d+1, where the support can be large): start from the affine
    minimiser of all points, dropping those with non-positive weights until the rest are
    positive (near a simplex ETF that is already the answer). Otherwise (K > d+1: at most d+1
    points in the support) start from the nearest vertex. Then Wolfe's algorithm, which stops
    at the certified optimality gap x.x - min_j y_j.x <= tol (`max_iter` major cycles at most,
    default 20 n + 100). Raises SolverNotOptimal if the result's gap is not below ACCEPT_TOL.
    """
    n = q.shape[0]
    scale = max(float(np.max(np.diag(q))), np.finfo(np.float64).tiny)
    iterations = 20 * n + 100 if max_iter is None else max_iter
    support = np.arange(n) if warm_start else np.arange(0)
    weights = None
    while support.size:
        alpha = _affine_min(q[np.ix_(support, support)])
        if alpha is None:
            break
        if alpha.min() > WEIGHT_TOL:
            weights = _wolfe(q, scale, iterations, list(support), alpha)
            break
        support = support[alpha > WEIGHT_TOL]
    if weights is None:
        start = int(np.argmin(np.diag(q)))
        weights = _wolfe(q, scale, iterations, [start], np.array([1.0]))
    gap = _gap(q, weights)
    if not gap <= ACCEPT_TOL * scale:
        raise SolverNotOptimal(
            f"the min-norm-point QP over {n} points stopped with optimality gap {gap:.3g} "
            f"(> {ACCEPT_TOL:g} x {scale:.3g}) after at most {iterations} iterations"
        )
    return weights


def _gap(q: np.ndarray, a: np.ndarray) -> float:
    """Wolfe's optimality gap x.x - min_j y_j.x for x = sum_j a_j y_j."""
    qa = q @ a
    return float(a @ qa - qa.min())


def _affine_min(q: np.ndarray) -> np.ndarray | None:
    """Weights (summing to 1) of the min-norm point of the affine hull of the points."""
    n = q.shape[0]
    kkt = np.zeros((n + 1, n + 1))
    kkt[:n, :n] = q
    kkt[:n, n] = kkt[n, :n] = 1.0
    rhs = np.zeros(n + 1)
    rhs[n] = 1.0
    try:
        sol = np.linalg.solve(kkt, rhs)
    except np.linalg.LinAlgError:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    if not np.all(np.isfinite(sol)) or np.abs(sol[:n].sum() - 1.0) > 1e-8:
        sol = np.linalg.lstsq(kkt, rhs, rcond=None)[0]
    return sol[:n] if np.all(np.isfinite(sol)) else None


def _wolfe(
    q: np.ndarray, scale: float, max_iter: int, support: list[int], lam: np.ndarray
) -> np.ndarray:
    """Wolfe's minimum-norm-point algorithm on the Gram matrix q, from a positive corral."""
    n = q.shape[0]
    for _ in range(max_iter):
        g = q[:, support] @ lam  # y_j . x for every point j
        j = int(np.argmin(g))
        if lam @ g[support] - g[j] <= GAP_TOL * scale or j in support:
            break
        support.append(j)
        lam = np.append(lam, 0.0)
        while True:  # minor cycles: move to the affine minimiser of the corral, dropping points
            alpha = _affine_min(q[np.ix_(support, support)])
            if alpha is None:
                break
            if alpha.min() > WEIGHT_TOL:
                lam = alpha
                break
            neg = alpha < lam  # only coordinates that decrease can hit zero
            ratios = np.where(neg & (alpha <= WEIGHT_TOL), lam / np.maximum(lam - alpha, 1e-300), 1)
            theta = float(min(1.0, ratios.min()))
            lam = theta * alpha + (1.0 - theta) * lam
            keep = lam > WEIGHT_TOL
            if keep.all():
                keep[int(np.argmin(lam))] = False
            support = [s for s, kept in zip(support, keep, strict=True) if kept]
            lam = lam[keep] / lam[keep].sum()
    out = np.zeros(n)
    out[support] = lam
    return out
