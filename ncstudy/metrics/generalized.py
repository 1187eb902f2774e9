"""Generalised NC for K > d+1 (Jiang et al.): gnc1..gnc3 and the Tammes max cosine.

`gnc2` is the one-vs-rest margin rho(W) = min_k dist(w^_k, conv{w^_j : j != k}). Each distance
is the minimum-norm point of the shifted polytope conv{y_j = w^_j - w^_k}, solved in its
homogeneous form min ||v||^2 s.t. y_j . v >= 1 for all j (then dist = 1/||v||): a strictly convex
QP in <= min(K, d) variables, solved by DAQP (a dual active-set solver), and certified: the
solver's multipliers give a point of the hull (an upper bound on the distance) and v a
separating direction (a lower bound); a distance is reported only when the two agree.
"""

from __future__ import annotations

import math
import warnings
from ctypes import c_int

import daqp
import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

from ncstudy.metrics._linalg import cosine_matrix, off_diagonal, safe_normalize
from ncstudy.metrics.classical import nc1, row_cosines
from ncstudy.metrics.stats import blas_threads

# Certified relative gap (upper - lower) / upper that a distance must reach to be reported.
ACCEPT_TOL = 1e-9
# A distance whose certified upper bound is at most this is 0 (the point lies in the others' hull).
ZERO_TOL = 1e-12
QP_TOL = 1e-12  # DAQP's primal and dual feasibility tolerances (its defaults are 1e-6)
QP_ITER_LIMIT = 10_000  # DAQP iterations per QP (it needs about as many as active constraints)


def gnc1(counts: Tensor, sum_normalized: Tensor, within_scatter_normalized: Tensor) -> float | None:
    """nc1 on the L2-normalised features."""
    return nc1(counts, sum_normalized, within_scatter_normalized)


def gnc3(weights: Tensor, normalized_means: Tensor) -> float | None:
    """Jiang et al.'s GNC3: (1/K) sum_k (1 - w^_k . hbar_k), hbar_k the (uncentred, not
    renormalised) mean of the class's L2-normalised features, over the classes present."""
    if weights.shape[0] == 0:
        return None
    unit_w = safe_normalize(weights)
    return float((1.0 - (unit_w * normalized_means).sum(dim=1)).mean())


def gnc3_centred(weights: Tensor, centred_means: Tensor) -> float | None:
    """(1/K) sum_k (1 - cos(w_k, mu_k - mu_G)) over the classes present (raw features,
    centred by the global mean: ncstudy's earlier `gnc3`)."""
    if weights.shape[0] == 0:
        return None
    return float((1.0 - row_cosines(weights, centred_means)).mean())


def max_cos_weights(weights: Tensor) -> float | None:
    """max over j != k of cos(w_j, w_k) (the Tammes objective)."""
    if weights.shape[0] < 2:
        return None
    return float(off_diagonal(cosine_matrix(weights)).max())


class SolverNotOptimal(RuntimeError):
    """The min-norm-point QP stopped without a certified optimum (its bounds disagree)."""


def gnc2(weights: Tensor, max_iter: int = QP_ITER_LIMIT) -> float | None:
    """rho_ovr(W): min over k of the distance from w^_k to the hull of the other unit rows.

    None (the metric is omitted) with a RuntimeWarning if any per-class QP is not certified
    optimal: an uncertified distance is only an upper bound, not the metric.
    """
    k = weights.shape[0]
    if k < 2:
        return None
    unit = safe_normalize(weights.to(torch.float64)).cpu().numpy()
    try:
        # The QPs are small: BLAS threads only add overhead (and contention on a busy node).
        with blas_threads(1):
            return _min_distance(span_coordinates(unit), max_iter)
    except SolverNotOptimal as err:
        warnings.warn(f"gnc2 omitted: {err}", RuntimeWarning, stacklevel=2)
        return None


def _min_distance(points: np.ndarray, max_iter: int) -> float:
    """min_k dist(p_k, conv(others)), classes taken by increasing lower bound 1 - max_j cos:
    once that bound reaches the smallest distance so far, no later class can be smaller."""
    lower = _cosine_lower_bounds(points)
    best = float("inf")
    for k in np.argsort(lower, kind="stable"):
        if lower[k] >= best:
            break
        best = min(best, one_vs_rest_distance(points, int(k), max_iter))
    return best


def _cosine_lower_bounds(points: np.ndarray) -> np.ndarray:
    """1 - max_{j != k} p_k . p_j <= dist(p_k, conv(others)) for a unit p_k (every hull point
    x has p_k . x <= that max, and ||p_k - x|| >= p_k . (p_k - x)); 0 for a zero row."""
    gram = points @ points.T
    np.fill_diagonal(gram, -np.inf)
    unit = np.abs(np.einsum("ij,ij->i", points, points) - 1.0) < 1e-12
    return np.where(unit, np.maximum(1.0 - gram.max(axis=1), 0.0), 0.0)


def span_coordinates(points: np.ndarray) -> np.ndarray:
    """The rows in an orthonormal basis of their span when d > K (an isometry: distances are
    unchanged, and each QP has min(K, d) variables instead of d)."""
    k, d = points.shape
    if d <= k:
        return points
    # points^T = Q R with Q (d, K) orthonormal: points = R^T Q^T, so R^T holds the coordinates.
    return np.linalg.qr(points.T, mode="r").T


def one_vs_rest_distance(points: np.ndarray, k: int, max_iter: int = QP_ITER_LIMIT) -> float:
    """dist(p_k, conv{p_j : j != k}), certified to ACCEPT_TOL (relative) or ZERO_TOL."""
    shifted = np.delete(points, k, axis=0) - points[k]
    lower, upper = min_norm_bounds(shifted, max_iter)
    if upper <= ZERO_TOL or (math.isfinite(upper) and upper - lower <= ACCEPT_TOL * upper):
        return upper
    raise SolverNotOptimal(
        f"the min-norm-point QP of class {k} over {len(shifted)} points is not certified: "
        f"the distance lies in [{lower:.12g}, {upper:.12g}], a relative gap above {ACCEPT_TOL:g}"
    )


def min_norm_bounds(y: np.ndarray, max_iter: int = QP_ITER_LIMIT) -> tuple[float, float]:
    """Certified (lower, upper) bounds on min{||x|| : x in conv(rows of y)}.

    Solves min ||v||^2/2 s.t. y v >= 1 (DAQP). The multipliers lam >= 0 weigh a hull point
    x = y^T lam / sum(lam) (upper bound ||x||); any direction u bounds it below by
    min_j y_j . u / ||u|| (every hull point has that projection on u), tried for u = v and x.
    The QP is infeasible exactly when the origin is in the hull: then a non-negative least
    squares fit of the origin gives the upper bound and 0 the lower one.
    """
    n, r = y.shape
    v, _, flag, info = daqp.solve(
        np.eye(r),
        np.zeros(r),
        y,
        np.full(n, 1e30),
        np.ones(n),
        np.zeros(n, dtype=c_int),
        primal_tol=QP_TOL,
        dual_tol=QP_TOL,
        iter_limit=max_iter,
    )
    if flag == -1:  # infeasible
        return 0.0, _hull_point_norm(y, _origin_weights(y))
    lam = info["lam"]
    if not (np.all(np.isfinite(v)) and np.all(np.isfinite(lam))):
        return 0.0, float("inf")
    # Whatever DAQP's status, the bounds below hold; only their agreement certifies a distance.
    return hull_bounds(y, np.maximum(-lam, 0.0), v)  # DAQP's multipliers here are <= 0


def hull_bounds(y: np.ndarray, a: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """(lower, upper) on the min norm over conv(rows of y) from any weights a >= 0 (the hull
    point y^T a / sum(a)) and any direction v: valid whatever solver produced them."""
    upper = _hull_point_norm(y, a)
    return min(_separation(y, v), upper), upper


def _hull_point_norm(y: np.ndarray, a: np.ndarray) -> float:
    """||y^T a / sum(a)|| for non-negative weights a (inf when they are all zero)."""
    total = float(a.sum())
    return float(np.linalg.norm(y.T @ (a / total))) if total > 0 else float("inf")


def _separation(y: np.ndarray, u: np.ndarray) -> float:
    """max(0, min_j y_j . u / ||u||): a lower bound on the norm of every point of conv(y)."""
    norm = float(np.linalg.norm(u))
    return max(0.0, float((y @ u).min()) / norm) if norm > 0 else 0.0


def _origin_weights(y: np.ndarray) -> np.ndarray:
    """Non-negative weights a with y^T a ~ 0 and sum(a) ~ 1 (NNLS with a heavy sum row)."""
    heavy = 1e3 * max(1.0, float(np.abs(y).max()))
    system = np.vstack([y.T, np.full((1, len(y)), heavy)])
    target = np.zeros(system.shape[0])
    target[-1] = heavy
    return nnls(system, target)[0]
