"""Small linear-algebra helpers shared by the metric families (guarded against zeros)."""

from __future__ import annotations

import torch
from torch import Tensor


def safe_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """x / ||x|| along `dim`; an exactly zero vector stays zero (no NaN)."""
    norm = x.norm(dim=dim, keepdim=True)
    return torch.where(norm > 0, x / norm.clamp(min=torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def cosine_matrix(x: Tensor) -> Tensor:
    """Pairwise cosines of the rows of x; a zero row has cosine 0 with everything."""
    u = safe_normalize(x)
    return u @ u.T


def off_diagonal(g: Tensor) -> Tensor:
    """The strictly upper-triangular entries (pairs j < k) of a square matrix."""
    rows, cols = torch.triu_indices(g.shape[0], g.shape[1], offset=1, device=g.device)
    return g[rows, cols]


def effective_rank(spectrum: Tensor) -> float:
    """exp(entropy of s / sum(s)) for non-negative singular values s; zeros contribute 0.

    An all-zero spectrum (e.g. a fully collapsed class) has effective rank 0, the NC ideal.
    """
    s = spectrum.clamp(min=0)
    total = s.sum()
    if float(total) <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def covariance_singular_values(rows: Tensor) -> Tensor:
    """Singular values of Cov(rows) = (1/n) sum (r - mean)(r - mean)^T, via an SVD of the rows."""
    centred = rows - rows.mean(0, keepdim=True)
    s = torch.linalg.svdvals(centred)
    return s * s / rows.shape[0]


def psd_spectrum(matrix: Tensor, scale: float | Tensor) -> Tensor:
    """|eigenvalues| of a symmetric PSD matrix; those below d * eps * scale are set to 0.

    The matrices here are differences of second moments, so their round-off is of order
    eps * scale; without the floor a collapsed (zero) covariance would have a noise spectrum.
    For a batch (m, d, d), `scale` may be a tensor of shape (m, 1).
    """
    sym = 0.5 * (matrix + matrix.transpose(-1, -2))
    ev = torch.linalg.eigvalsh(sym).abs()
    floor = psd_spectrum_floor(matrix.shape[-1], matrix.dtype, scale)
    return torch.where(ev > floor, ev, torch.zeros_like(ev))


def psd_spectrum_floor(dim: int, dtype: torch.dtype, scale: float | Tensor) -> float | Tensor:
    """d * eps * scale: eigenvalues below it are round-off of a matrix of that scale."""
    return dim * torch.finfo(dtype).eps * scale
