"""Classical NC1-NC4 (Papyan et al. 2020) as pure functions of sufficient statistics.

Classes without samples are left out of every mean-based quantity (K then counts the classes
present); a metric whose denominator is zero (a single class, identical means, a zero W) is
returned as None and omitted from the metric dict rather than reported as NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ncstudy.metrics._linalg import cosine_matrix, off_diagonal


def class_means(counts: Tensor, sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(present mask, means of the present classes (K', d), global mean over all samples)."""
    present = counts > 0
    means = sums[present] / counts[present, None]
    global_mean = sums.sum(0) / counts.sum().clamp(min=1)
    return present, means, global_mean


def within_class_covariance(counts: Tensor, within_scatter: Tensor) -> Tensor:
    """Sigma_W = (1/N) sum_i (h_i - mu_y)(h_i - mu_y)^T from the centred within-class scatter."""
    sigma_w = within_scatter / counts.sum().clamp(min=1)
    return 0.5 * (sigma_w + sigma_w.T)


def nc1(counts: Tensor, sums: Tensor, within_scatter: Tensor) -> float | None:
    """tr(Sigma_W Sigma_B^+)/K with the pseudo-inverse on the top-(K-1) range of Sigma_B."""
    present, means, global_mean = class_means(counts, sums)
    k = int(present.sum())
    if k < 2:
        return None
    centred = means - global_mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    rank = min(k - 1, s.numel())
    s, vh = s[:rank], vh[:rank]
    keep = s > max(centred.shape) * torch.finfo(s.dtype).eps * s[0]
    if not bool(keep.any()):
        return None
    s, vh = s[keep], vh[keep]
    sigma_w = within_class_covariance(counts, within_scatter)
    # Sigma_B = V diag(s^2/K) V^T, so tr(Sigma_W Sigma_B^+) = sum_i K v_i^T Sigma_W v_i / s_i^2.
    quad = ((vh @ sigma_w) * vh).sum(1)
    return float((quad * k / (s * s)).sum() / k)


def equinorm(rows: Tensor) -> float | None:
    """std/mean of the row norms (unbiased std, as in the canonical analysis code)."""
    norms = rows.norm(dim=1)
    mean = norms.mean()
    if rows.shape[0] < 2 or float(mean) <= 0:
        return None
    return float(norms.std() / mean)


def equiangle(rows: Tensor) -> float | None:
    """Unbiased std over pairs j < k of cos(row_j, row_k); needs at least two pairs."""
    if rows.shape[0] < 3:
        return None
    return float(off_diagonal(cosine_matrix(rows)).std())


def maxangle(rows: Tensor) -> float | None:
    """Mean over pairs j < k of |cos(row_j, row_k) + 1/(K-1)|."""
    k = rows.shape[0]
    if k < 2:
        return None
    return float((off_diagonal(cosine_matrix(rows)) + 1.0 / (k - 1)).abs().mean())


def etf_distance(centred_rows: Tensor) -> float | None:
    """|| G/||G||_F - E ||_F with G the Gram of the (centred) rows and E the unit simplex Gram."""
    k = centred_rows.shape[0]
    if k < 2:
        return None
    gram = centred_rows @ centred_rows.T
    norm = gram.norm()
    if float(norm) <= 0:
        return None
    eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
    etf = (eye - torch.full_like(gram, 1.0 / k)) / math.sqrt(k - 1)
    return float((gram / norm - etf).norm())


def nc3(weights: Tensor, centred_means: Tensor) -> float | None:
    """|| W/||W||_F - M~/||M~||_F ||_F^2 over the classes present."""
    w_norm, m_norm = weights.norm(), centred_means.norm()
    if float(w_norm) <= 0 or float(m_norm) <= 0:
        return None
    return float(((weights / w_norm - centred_means / m_norm) ** 2).sum())


def row_cosines(a: Tensor, b: Tensor) -> Tensor:
    """cos(a_k, b_k) per row; 0 where either row is zero."""
    dots = (a * b).sum(1)
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, dots / norms.clamp(min=torch.finfo(a.dtype).tiny), 0.0 * dots)


def nc3_cos(weights: Tensor, centred_means: Tensor) -> float | None:
    """mean_k cos(W_k, mu_k - mu_G)."""
    if weights.shape[0] == 0:
        return None
    return float(row_cosines(weights, centred_means).mean())


def nc4(mismatches: float | None, samples: float | None) -> float | None:
    """Fraction of samples whose prediction differs from the nearest class mean."""
    if mismatches is None or not samples:
        return None
    return mismatches / samples
