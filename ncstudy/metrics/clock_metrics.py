"""The convergence clock's metrics from the features of a small, fixed subset held in memory.

The clock pass (ncstudy.evaluate.clock) measures the tracked metrics every few iterations on a
few hundred training samples, so it keeps their features and computes the same definitions as
the streaming pass (ncstudy.metrics.compute) directly: exact centred scatters, and the
per-class spectra of `erank_intra` from an SVD of each class's rows (n_k x d, cheap for small
n_k) instead of d x d eigendecompositions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ncstudy.metrics import classical, rank
from ncstudy.metrics._linalg import (
    covariance_singular_values,
    effective_rank,
    psd_spectrum_floor,
    safe_normalize,
)
from ncstudy.metrics.convergence import NETWORK_CLOCK_METRICS
from ncstudy.metrics.stats import intra_class_subset


def _class_sums(rows: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(per-class sums (K, d), the rows minus their class mean): centred exactly."""
    sums = torch.zeros(num_classes, rows.shape[1], dtype=rows.dtype, device=rows.device)
    sums.index_add_(0, labels, rows)
    counts = torch.bincount(labels, minlength=num_classes).to(rows.dtype)
    return sums, rows - (sums / counts.clamp(min=1)[:, None])[labels]


def erank_intra_rows(units: Tensor, labels: Tensor, classes: Tensor) -> float | None:
    """`erank_intra` of the normalised rows: mean over `classes` with >= 2 samples of
    erank(Cov{z_i : y_i = k}), eigenvalues below d * eps * tr(Cov) set to 0 (as the streaming
    version does); None when no such class has two samples."""
    ranks = []
    for k in classes.tolist():
        rows = units[labels == k]
        if rows.shape[0] < 2:
            continue
        spectrum = covariance_singular_values(rows)
        floor = psd_spectrum_floor(rows.shape[1], rows.dtype, spectrum.sum())
        ranks.append(effective_rank(torch.where(spectrum > floor, spectrum, 0.0)))
    return sum(ranks) / len(ranks) if ranks else None


def clock_metrics(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weights: Tensor | None,
    max_intra_classes: int = 100,
    names: Sequence[str] = NETWORK_CLOCK_METRICS,
) -> dict[str, float]:
    """The metrics of `names` (a subset of the network clock's) of these features (the loss's
    embed() outputs) and classifier rows; undefined ones (and all, for non-finite features) are
    left out, as compute_nc_metrics does."""
    h = features.double()
    if h.shape[0] == 0 or not bool(torch.isfinite(h).all()):
        return {}
    y = labels.to(h.device).long()
    counts = torch.bincount(y, minlength=num_classes).double()
    sums, centred = _class_sums(h, y, num_classes)
    units = safe_normalize(h)
    sum_units, centred_units = _class_sums(units, y, num_classes)
    scatter_units = centred_units.T @ centred_units
    out: dict[str, float | None] = {
        "nc1": classical.nc1(counts, sums, centred.T @ centred),
        "erank_inter": rank.erank_inter(counts, sum_units),
        "erank_intra": erank_intra_rows(
            units, y, intra_class_subset(num_classes, max_intra_classes)
        ),
    }
    if weights is not None and bool(torch.isfinite(weights).all()):
        w = weights.detach().to(h.device, h.dtype)
        out["erank_weights"] = rank.erank_weights(w)
        out["align_weight_mean"] = rank.align_weight_mean(w, counts, sum_units)
        out["align_weight_inst"] = rank.align_weight_inst(w, counts, sum_units, scatter_units)
    return {k: float(v) for k, v in out.items() if v is not None and k in names}
