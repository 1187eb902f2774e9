"""Neural-collapse metrics (spec/metrics.md): streaming statistics, metrics, convergence clock."""

from ncstudy.metrics.compute import METRIC_NAMES, compute_nc_metrics
from ncstudy.metrics.convergence import (
    clock_summary,
    closeness,
    ewma,
    metric_target,
    record_history,
    steps_to_95,
    steps_to_ref,
)
from ncstudy.metrics.stats import NCAccumulator, NCStatistics

__all__ = [
    "METRIC_NAMES",
    "NCAccumulator",
    "NCStatistics",
    "clock_summary",
    "closeness",
    "compute_nc_metrics",
    "ewma",
    "metric_target",
    "record_history",
    "steps_to_95",
    "steps_to_ref",
]
