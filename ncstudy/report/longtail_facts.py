"""What the long-tail table says about its trials' data, from what each trial logged: the
training imbalance it measured (`data/imbalance_ratio`) and the class-group thresholds its
lt/* metrics used (the params `evaluation.longtail.many_threshold` / `few_threshold`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ncstudy.report.tables import MISSING, ordered

IMBALANCE = "data/imbalance_ratio"  # largest / smallest training class count (worker-logged)
THRESHOLDS = ("lt_many_threshold", "lt_few_threshold")  # the load step's columns


def ratio_text(v: float) -> str:
    """An imbalance ratio as `100.0x`, or the missing mark."""
    return MISSING if v is None or not np.isfinite(v) else f"{v:.1f}x"


def thresholds_text(trials: pd.DataFrame) -> str:
    """The group thresholds the trials used, as a caption phrase (several when they differ)."""
    if not set(THRESHOLDS) <= set(trials.columns):
        return "thresholds in evaluation.longtail"
    pairs = trials[list(THRESHOLDS)].dropna().drop_duplicates()
    if pairs.empty:
        return "thresholds in evaluation.longtail"
    parts = [
        f"many-shot > {int(m)} training images, few-shot < {int(f)}"
        for m, f in ordered(list(map(tuple, pairs.to_numpy())))
    ]
    return "; ".join(parts) + " (evaluation.longtail)"


def imbalance_caption(trials: pd.DataFrame) -> str:
    """The caption sentence of the imbalance column, or nothing when no trial logged it."""
    if IMBALANCE not in trials.columns:
        return ""
    return (
        " imbalance: the largest over the smallest training class count each trial measured "
        f"({IMBALANCE}), mean over seeds."
    )
