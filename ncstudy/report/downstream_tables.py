"""The downstream tables (the source paper's Tables 4, 5, 6): linear transfer, long-tailed group
accuracies and corruption robustness, each at every loss's best configuration (chosen by
validation accuracy), mean over finished seeds. Only tables some trial logged are produced.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ncstudy.report.tables import (
    MISSING,
    SELECTION,
    Table,
    best_configs,
    chosen_trials,
    column,
    num,
    ordered,
    pct,
    prepared,
)

REFERENCE_LOSS = "ce"
LT_GROUPS = (("all", "lt/acc1"), ("many", "lt/many_acc1"), ("medium", "lt/medium_acc1"))
LT_GROUPS += (("few", "lt/few_acc1"),)


def _rows(trials: pd.DataFrame, metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """Per (setting, loss) at the chosen configuration: the seed mean of each (label, metric)."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    rows = []
    for setting in ordered(t["setting"]):
        for loss in ordered(t["loss"]):
            sel = chosen[(chosen.setting == setting) & (chosen.loss == loss)]
            row = {"setting": setting, "loss": loss}
            row.update({label: column(sel, m).mean() for label, m in metrics})
            rows.append(row)
    return pd.DataFrame(rows, columns=["setting", "loss", *(label for label, _ in metrics)])


def _logged(trials: pd.DataFrame, pattern: str) -> list[str]:
    return sorted(c for c in trials.columns if re.fullmatch(pattern, c) and trials[c].notna().any())


def relative_change(data: pd.DataFrame, col: str, reference: str) -> pd.Series:
    """(value - reference loss's value) / reference's value, per setting (NaN without one)."""
    ref = data[data.loss == reference].set_index("setting")[col]
    base = data["setting"].map(ref)
    return (data[col] - base) / base


def transfer_table(trials: pd.DataFrame, reference: str = REFERENCE_LOSS) -> Table | None:
    """Table 4: linear-transfer accuracy per downstream dataset, the mean, the change vs `ce`."""
    keys = _logged(trials, r"transfer/([^/]+)/(acc1|map)")
    if not keys:
        return None
    metrics = [(k.split("/")[1], k) for k in keys] + [("mean", "transfer/mean_acc1")]
    data = _rows(trials, metrics)
    data[f"vs {reference}"] = relative_change(data, "mean", reference)
    shown = data.astype(object)
    for label, _ in metrics:
        shown[label] = [pct(v) for v in data[label]]
    shown[f"vs {reference}"] = [
        MISSING if not np.isfinite(v) else f"{100 * v:+.1f}%" for v in data[f"vs {reference}"]
    ]
    return Table(
        "transfer",
        "Linear transfer (Table 4)",
        "Test accuracy (%) of a linear probe on the frozen encoder for each downstream dataset "
        "(VOC2007: multi-label classification, mAP, not detection), their mean and the relative "
        f"change of the mean against {reference} in the same setting; at each loss's "
        f"{SELECTION}. {MISSING}: not logged.",
        data,
        shown,
    )


def longtail_table(trials: pd.DataFrame) -> Table | None:
    """Table 5: long-tailed accuracy overall and on many / medium / few-shot classes."""
    if not _logged(trials, r"lt/acc1"):
        return None
    data = _rows(trials, list(LT_GROUPS))
    data = data[data[[g for g, _ in LT_GROUPS]].notna().any(axis=1)].reset_index(drop=True)
    shown = data.astype(object)
    for label, _ in LT_GROUPS:
        shown[label] = [pct(v) for v in data[label]]
    return Table(
        "longtail",
        "Long-tailed evaluation (Table 5)",
        "Test accuracy (%) of trials on imbalanced training sets: all test samples, and the "
        "mean per-class accuracy of many-shot, medium-shot and few-shot classes (groups from "
        f"the training counts, thresholds in evaluation.longtail); at each loss's {SELECTION}.",
        data,
        shown,
    )


def corruption_table(trials: pd.DataFrame) -> Table | None:
    """Table 6: corruption error per corruption, the mean error and mCE (ImageNet)."""
    keys = _logged(trials, r"corruption/([^/]+)/err")
    if not keys:
        return None
    metrics = [(k.split("/")[1], k) for k in keys] + [("mean", "corruption/mean_err")]
    if _logged(trials, r"corruption/mce"):
        metrics.append(("mCE", "corruption/mce"))
    data = _rows(trials, metrics)
    shown = data.astype(object)
    for label, _ in metrics:
        shown[label] = [num(v) if label == "mCE" else pct(v) for v in data[label]]
    return Table(
        "corruptions",
        "Corruption robustness (Table 6)",
        "Top-1 error (%) under each corruption (mean over severities) and their mean; mCE "
        "(ImageNet only) normalises each corruption's error by AlexNet's (Hendrycks & "
        f"Dietterich 2019) before averaging; at each loss's {SELECTION}.",
        data,
        shown,
    )


def downstream_tables(trials: pd.DataFrame) -> list[Table]:
    """The downstream tables some trial of the study logged, in the paper's order."""
    tables = (transfer_table(trials), longtail_table(trials), corruption_table(trials))
    return [t for t in tables if t is not None]
