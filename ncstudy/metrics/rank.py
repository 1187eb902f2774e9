"""Effective ranks and weight/feature alignments (the source paper's Table 3).

All of these use the L2-normalised features z. Per-sample alignments are expanded into sums:
sum_i ||a - z_i||^2 over a class = n ||a||^2 - 2 a . sum z + sum ||z||^2, so no sample is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ncstudy.metrics._linalg import (
    covariance_singular_values,
    effective_rank,
    psd_spectrum,
    safe_normalize,
)


def erank_intra(
    counts: Tensor, sum_normalized: Tensor, intra_classes: Tensor, scatter_normalized: Tensor
) -> float | None:
    """Mean over the tracked classes with >= 2 samples of erank(Cov{z_i : y_i = k}).

    Cov is symmetric PSD, so its singular values are |eigenvalues| (eigvalsh of d x d); a
    collapsed class has effective rank 0. None when no tracked class has two samples.
    """
    ranks = []
    for slot, k in enumerate(intra_classes.tolist()):
        n = float(counts[k])
        if n < 2:
            continue
        mean = sum_normalized[k] / n
        second = scatter_normalized[slot] / n
        cov = second - torch.outer(mean, mean)
        ranks.append(effective_rank(psd_spectrum(cov, float(second.diagonal().sum()))))
    return sum(ranks) / len(ranks) if ranks else None


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
    anchors: Tensor, counts: Tensor, sum_normalized: Tensor, sq_norm_normalized: Tensor
) -> float | None:
    """(1/N) sum_i ||anchor_{y_i} - z_i||^2 from per-class sums (anchors: (K, d))."""
    total = counts.sum()
    if float(total) <= 0:
        return None
    per_class = (
        counts * (anchors * anchors).sum(1)
        - 2.0 * (anchors * sum_normalized).sum(1)
        + sq_norm_normalized
    )
    return float(per_class.sum() / total)


def align_weight_inst(
    weights: Tensor, counts: Tensor, sum_normalized: Tensor, sq_norm_normalized: Tensor
) -> float | None:
    """mean_i ||w^_{y_i} - z_i||^2."""
    return _mean_sq_distance_to(safe_normalize(weights), counts, sum_normalized, sq_norm_normalized)


def align_inst_mean(
    counts: Tensor, sum_normalized: Tensor, sq_norm_normalized: Tensor
) -> float | None:
    """mean_i ||z_i - mu^_{y_i}||^2."""
    return _mean_sq_distance_to(
        safe_normalize(sum_normalized), counts, sum_normalized, sq_norm_normalized
    )
