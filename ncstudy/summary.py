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


UI_HOST = "http://127.0.0.1:5000"  # where the printed `mlflow ui` command serves


def runs_view_url(base: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs table in MLflow's training view. MLflow 3.17
    picks its view from the link's `workflowType` (else the browser's last choice, GenAI at
    first); no experiment tag sets it, so the link carries it."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def mlflow_ui_command(paths: StudyPaths, study_name: str | None = None) -> str:
    """The exact command that opens the MLflow UI on this study's store (localhost only) and,
    once the study has an experiment, the link to its runs table on its own line."""
    found = tracking.find_study_run(paths.tracking_uri, study_name) if study_name else None
    uri = paths.tracking_uri
    if not uri.startswith("sqlite:"):  # an MLflow server: its own address serves the UI
        web = uri.startswith(("http://", "https://"))
        return runs_view_url(uri, found[1]) if found and web else f"open {uri} (MLflow server)"
    command = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return (
        command if found is None else f"{command}\n  then open  {runs_view_url(UI_HOST, found[1])}"
    )
