"""The end-of-study summary: one row per trial read back from MLflow, the printed table, and
the command that opens the MLflow UI on the study's store."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ncstudy import tracking
from ncstudy.config import TrialSpec
from ncstudy.paths import StudyPaths


@dataclass(frozen=True)
class TrialRow:
    key: str
    status: str
    final_val_acc1: float | None
    best_val_acc1: float | None
    reason: str | None
    final_train_loss: float | None = None


def summarize(mlf: Any, experiment_id: str, trials: list[TrialSpec] | None) -> list[TrialRow]:
    """One row per trial, read back from MLflow: in grid order, or (a search, `trials` None)
    every trial run in the order it started."""
    by_key = {}
    for run in mlf.search_runs([experiment_id], max_results=50000, order_by=["start_time ASC"]):
        key = run.data.tags.get(tracking.TRIAL_KEY_TAG)
        if key:
            by_key[key] = run
    keys = list(by_key) if trials is None else [t.key for t in trials]
    rows = []
    for key in keys:
        run = by_key.get(key)
        if run is None:
            rows.append(TrialRow(key, "NOT STARTED", None, None, None))
            continue
        m = run.data.metrics
        rows.append(
            TrialRow(
                key,
                run.info.status,
                m.get("final/val_acc1"),
                m.get("best/val_acc1"),
                run.data.tags.get(tracking.REASON_TAG),
                m.get("train/loss"),
            )
        )
    return rows


def format_summary(rows: list[TrialRow]) -> str:
    """The end-of-study table: key, status, final and best validation accuracy, and the last
    training loss (where a temperature shows even when accuracies tie)."""

    def pct(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"

    def num(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"

    header = ("trial", "status", "final val acc1 %", "best val acc1 %", "final train loss")
    body = [
        (r.key, r.status, pct(r.final_val_acc1), pct(r.best_val_acc1), num(r.final_train_loss))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r.reason and r.status != "FINISHED":
            lines.append(f"{r.key}: {r.status}: {r.reason.splitlines()[-1]}")
    return "\n".join(lines)


def mlflow_ui_command(paths: StudyPaths) -> str:
    """The exact command that opens the MLflow UI on this study's store (localhost only)."""
    if paths.tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {paths.tracking_uri} (MLflow server)"
