"""Effective ranks and weight/feature alignments (the source paper's Table 3).

All of these use the L2-normalised features z. Per-sample alignments come from centred sums:
sum_i ||a - z_i||^2 over a class = tr(S) + n ||m - a||^2 (S the class's scatter about its mean m),
so no sample is kept and nothing cancels near collapse.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ncstudy.metrics._linalg import (
    covariance_singular_values,
    effective_rank,
    psd_spectrum_floor,
    safe_normalize,
)
from ncstudy.metrics.stats import blas_threads


def erank_intra(
    counts: Tensor, sum_normalized: Tensor, intra_classes: Tensor, scatter_normalized: Tensor
) -> float | None:
    """Mean over the tracked classes with >= 2 samples of erank(Cov{z_i : y_i = k}).

    Cov = S_k / n_k from the centred scatter (its lower triangle, see NCStatistics); it is
    symmetric PSD, so its singular values are |eigenvalues|, all classes in one batched eigvalsh
    (LAPACK through numpy, limited to torch's thread count); a collapsed class has effective
    rank 0. None when no tracked class has two samples.
    """
    n = counts[intra_classes]
    keep = n >= 2
    if not bool(keep.any()):
        return None
    scatter = scatter_normalized if bool(keep.all()) else scatter_normalized[keep]
    spectra = scatter_eigenvalues(scatter) / n[keep][:, None]  # of Cov = S / n
    # The scatter was accumulated about a row of the class (a typical distance from its mean):
    # its round-off is of order eps x tr(Cov), not eps x ||mean||^2 as an uncentred one's.
    scale = scatter.diagonal(dim1=-2, dim2=-1).sum(-1) / n[keep]
    floor = psd_spectrum_floor(scatter.shape[-1], scatter.dtype, scale[:, None])
    spectra = torch.where(spectra > floor, spectra, torch.zeros_like(spectra))
    return float(effective_ranks(spectra).mean())  # one host read, not one per class


def effective_ranks(spectra: Tensor) -> Tensor:
    """`effective_rank` of each row of a (C, d) batch of non-negative spectra, batched."""
    total = spectra.sum(-1, keepdim=True)
    p = spectra / total.clamp(min=torch.finfo(spectra.dtype).tiny)
    ranks = torch.exp(-torch.special.xlogy(p, p).sum(-1))
    return torch.where(total.squeeze(-1) > 0, ranks, torch.zeros_like(ranks))


def scatter_eigenvalues(scatter: Tensor) -> Tensor:
    """|eigenvalues| of a batch of symmetric matrices given by their lower triangles, on their
    own device: an accelerator solves them where they are (no copy to the host and back);
    on the CPU, numpy's LAPACK call (OpenBLAS, ~1.4x torch's MKL one on the benchmark host)."""
    if scatter.device.type != "cpu":
        return torch.linalg.eigvalsh(scatter, UPLO="L").abs()
    with blas_threads():  # LAPACK reads the lower triangle only (UPLO="L")
        ev = np.abs(np.linalg.eigvalsh(scatter.numpy(), UPLO="L"))
    return torch.from_numpy(ev)


def erank_inter(counts: Tensor, sum_normalized: Tensor) -> float | None:
    """erank of the covariance over the class means of z (K-1 at a simplex ETF)."""
    present = counts > 0
    if int(present.sum()) < 2:
        return None
    means = sum_normalized[present] / counts[present, None]
    return effective_rank(covariance_singular_values(means))


def erank_weights(weights: Tensor) -> float | None:
    """erank of the covariance over the K normalised weight rows."""
    if weights.shape[0] < 2:
        return None
    return effective_rank(covariance_singular_values(safe_normalize(weights)))


def normalized_class_means(counts: Tensor, sum_normalized: Tensor) -> Tensor:
    """mu^_k = normalise(mean of z over class k) for the present classes (K', d)."""
    return safe_normalize(sum_normalized[counts > 0])


def align_weight_mean(weights: Tensor, counts: Tensor, sum_normalized: Tensor) -> float | None:
    """mean_k ||w^_k - mu^_k||^2 over the present classes."""
    present = counts > 0
    if not bool(present.any()):
        return None
    w_hat = safe_normalize(weights[present])
    mu_hat = normalized_class_means(counts, sum_normalized)
    return float(((w_hat - mu_hat) ** 2).sum(1).mean())


def _mean_sq_distance_to(
    anchors: Tensor, counts: Tensor, sum_normalized: Tensor, within_scatter_normalized: Tensor
) -> float | None:
    """(1/N) sum_i ||anchor_{y_i} - z_i||^2 = (tr(W_z) + sum_k n_k ||m_k - anchor_k||^2) / N
    for the class means m_k of z and the pooled centred scatter W_z (anchors: (K, d))."""
    total = counts.sum()
    if float(total) <= 0:
        return None
    means = sum_normalized / counts.clamp(min=1)[:, None]
    offsets = counts * ((means - anchors) ** 2).sum(1)
    return float((within_scatter_normalized.diagonal().sum() + offsets.sum()) / total)


def align_weight_inst(
    weights: Tensor, counts: Tensor, sum_normalized: Tensor, within_scatter_normalized: Tensor
) -> float | None:
    """mean_i ||w^_{y_i} - z_i||^2."""
    return _mean_sq_distance_to(
        safe_normalize(weights), counts, sum_normalized, within_scatter_normalized
    )


def align_inst_mean(
    counts: Tensor, sum_normalized: Tensor, within_scatter_normalized: Tensor
) -> float | None:
    """mean_i ||z_i - mu^_{y_i}||^2."""
    return _mean_sq_distance_to(
        safe_normalize(sum_normalized), counts, sum_normalized, within_scatter_normalized
    )
