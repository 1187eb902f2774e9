"""NC2 and NC3 in the uncentred form of Yaras et al. 2022 (Theorem 1): normalised features have
no global mean to remove, so the class means themselves (not mu_k - mu_G) should form the
sphere-inscribed simplex ETF, Gram (K I - 1 1^T)/(K-1), and equal the classifier rows.
Named variants beside the centred `nc2_etf_dist_*` and `nc3` (docs/metrics.md)."""

from __future__ import annotations

from torch import Tensor

from ncstudy.metrics import classical

FEATURE_NAMES = ("nc2_uncentred_means",)
WEIGHT_NAMES = ("nc2_uncentred_weights", "nc3_uncentred")


def feature_metrics(means: Tensor) -> dict[str, float | None]:
    """|| G/||G||_F - E ||_F for G the Gram of the raw class means (rows)."""
    return {"nc2_uncentred_means": classical.etf_distance(means)}


def weight_metrics(weights: Tensor, means: Tensor) -> dict[str, float | None]:
    """The same ETF distance of the raw classifier rows, and || W/||W||_F - M/||M||_F ||_F^2
    with M the raw class means (`weights`: the rows of the classes present)."""
    return {
        "nc2_uncentred_weights": classical.etf_distance(weights),
        "nc3_uncentred": classical.nc3(weights, means),
    }
