"""All NC metrics of spec/metrics.md from one set of reduced statistics and a classifier.

Omitted rather than NaN: the weight-dependent metrics when `weights` is None; any metric whose
denominator vanishes (fewer than 2 classes with samples, identical class means, zero weights, a
zero entropy); `nc4` when no predictions were given; `erank_intra` when no tracked class has two
samples. Classes without samples are left out of every mean-based metric. Non-finite features
(a diverged run) give an empty dict; non-finite weights drop the weight-dependent metrics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ncstudy.metrics import classical, generalized, information, rank, uncentred, zhou
from ncstudy.metrics.stats import NCStatistics

FEATURE_METRICS = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equiangle_means",
    "nc2_maxangle_means",
    "nc2_etf_dist_means",
    "nc4",
    "erank_intra",
    "erank_inter",
    "align_inst_mean",
    "gnc1",
    *uncentred.FEATURE_NAMES,
)
WEIGHT_METRICS = (
    "nc2_equinorm_weights",
    "nc2_equiangle_weights",
    "nc2_maxangle_weights",
    "nc2_etf_dist_weights",
    "nc3",
    "nc3_cos",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "mir",
    "hdr",
    "mir_paper",
    "hdr_paper",
    "gnc2",
    "gnc3",
    "gnc3_centred",
    "max_cos_weights",
    "nc2_zhou",
    "nc3_zhou",
    *uncentred.WEIGHT_NAMES,
)
METRIC_NAMES = FEATURE_METRICS + WEIGHT_METRICS


def _feature_metrics(stats: NCStatistics) -> dict[str, float | None]:
    """The metrics that need only the features."""
    present, means, global_mean = classical.class_means(stats.counts, stats.sum_features)
    centred = means - global_mean
    return {
        **uncentred.feature_metrics(means),
        "nc1": classical.nc1(stats.counts, stats.sum_features, stats.within_scatter),
        "nc2_equinorm_means": classical.equinorm(centred),
        "nc2_equiangle_means": classical.equiangle(centred),
        "nc2_maxangle_means": classical.maxangle(centred),
        "nc2_etf_dist_means": classical.etf_distance(centred),
        "nc4": classical.nc4(stats.nc4_mismatches, stats.nc4_samples),
        "erank_intra": rank.erank_intra(
            stats.counts, stats.sum_normalized, stats.intra_classes, stats.scatter_normalized
        ),
        "erank_inter": rank.erank_inter(stats.counts, stats.sum_normalized),
        "align_inst_mean": rank.align_inst_mean(
            stats.counts, stats.sum_normalized, stats.within_scatter_normalized
        ),
        "gnc1": generalized.gnc1(
            stats.counts, stats.sum_normalized, stats.within_scatter_normalized
        ),
    }


def _weight_metrics(stats: NCStatistics, weights: Tensor) -> dict[str, float | None]:
    """The metrics that compare the classifier rows with the class means (or stand alone)."""
    present, means, global_mean = classical.class_means(stats.counts, stats.sum_features)
    centred = means - global_mean
    w_present = weights[present]
    centred_w = weights - weights.mean(0, keepdim=True)
    mu_hat = rank.normalized_class_means(stats.counts, stats.sum_normalized)
    global_z = stats.sum_normalized.sum(0) / stats.counts.sum().clamp(min=1)
    out: dict[str, float | None] = {
        "nc2_equinorm_weights": classical.equinorm(weights),
        "nc2_equiangle_weights": classical.equiangle(weights),
        "nc2_maxangle_weights": classical.maxangle(weights),
        "nc2_etf_dist_weights": classical.etf_distance(centred_w),
        "nc3": classical.nc3(w_present, centred),
        "nc3_cos": classical.nc3_cos(w_present, centred),
        "erank_weights": rank.erank_weights(weights),
        "align_weight_mean": rank.align_weight_mean(weights, stats.counts, stats.sum_normalized),
        "align_weight_inst": rank.align_weight_inst(
            weights, stats.counts, stats.sum_normalized, stats.within_scatter_normalized
        ),
        "gnc2": generalized.gnc2(weights),
        "gnc3": generalized.gnc3(w_present, _normalized_means(stats)[present]),
        "gnc3_centred": generalized.gnc3_centred(w_present, centred),
        "max_cos_weights": generalized.max_cos_weights(weights),
        "nc2_zhou": zhou.nc2_zhou(weights),  # paper 004's NC2 and NC3 (ncstudy/metrics/zhou.py)
        "nc3_zhou": zhou.nc3_zhou(w_present, centred),
    }
    out.update(information.information_metrics(w_present, mu_hat, global_z))
    out.update(uncentred.weight_metrics(w_present, means))
    return out


def _normalized_means(stats: NCStatistics) -> Tensor:
    """(K, d) per-class means of the L2-normalised features (zero rows for empty classes)."""
    return stats.sum_normalized / stats.counts.clamp(min=1).unsqueeze(1)


def _all_finite(*tensors: Tensor) -> bool:
    """True when no tensor holds a NaN or an inf (a diverged run has no meaningful metrics)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def compute_nc_metrics(stats: NCStatistics, weights: Tensor | None = None) -> dict[str, float]:
    """Every spec metric that is defined for these statistics, keyed by its spec name."""
    return _compute(stats, weights, with_features=True)


def compute_classifier_metrics(stats: NCStatistics, weights: Tensor) -> dict[str, float]:
    """Only the metrics that depend on the classifier: nc4 (of the predictions in `stats`) and
    the weight-dependent ones. The same keys and values as `compute_nc_metrics(stats, weights)`
    restricted to those names, without computing the feature-only metrics."""
    return _compute(stats, weights, with_features=False)


def _compute(
    stats: NCStatistics, weights: Tensor | None, *, with_features: bool
) -> dict[str, float]:
    """The defined metrics: all of them, or (`with_features` False) nc4 and the weight ones."""
    if weights is not None and tuple(weights.shape) != (stats.num_classes, stats.dim):
        raise ValueError(
            f"weights must have shape (num_classes, dim) = ({stats.num_classes}, {stats.dim}), "
            f"got {tuple(weights.shape)}; pass the classifier rows that belong to the loss"
        )
    if stats.num_samples <= 0 or not _all_finite(stats.sum_features, stats.within_scatter):
        return {}
    out: dict[str, float | None]
    if with_features:
        out = _feature_metrics(stats)
    else:
        out = {"nc4": classical.nc4(stats.nc4_mismatches, stats.nc4_samples)}
    if weights is not None:
        w = weights.detach().to(stats.counts.device, stats.counts.dtype)
        if _all_finite(w):
            out.update(_weight_metrics(stats, w))
    return {
        name: out[name]
        for name in METRIC_NAMES
        if out.get(name) is not None and torch.isfinite(torch.tensor(out[name]))
    }
