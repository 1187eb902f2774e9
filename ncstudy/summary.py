"""The end-of-study summary: one row per trial read back from MLflow, the printed table, and
the command that opens the MLflow UI on the study's store."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ncstudy import tracking
from ncstudy.config import TrialSpec
from ncstudy.history import next_step
from ncstudy.paths import StudyPaths


@dataclass(frozen=True)
class TrialRow:
    key: str
    status: str
    final_val_acc1: float | None
    best_val_acc1: float | None
    reason: str | None
    final_train_loss: float | None = None
    final_train_acc1: float | None = None
    final_test_acc1: float | None = None


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
                m.get("train/acc1"),
                m.get("final/test_acc1"),
            )
        )
    return rows


def format_summary(rows: list[TrialRow]) -> str:
    """The end-of-study table: key, status, final and best validation accuracy, and the last
    training loss (where a temperature shows even when accuracies tie). A study without a
    validation split (dataset.val_fraction 0) shows the final training and test accuracy."""

    def pct(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"

    def num(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"

    no_val = all(r.final_val_acc1 is None and r.best_val_acc1 is None for r in rows)
    if no_val and any(r.final_train_acc1 is not None for r in rows):
        header = ("trial", "status", "final train acc1 %", "final test acc1 %", "final train loss")
        accs = [(r.final_train_acc1, r.final_test_acc1) for r in rows]
    else:
        header = ("trial", "status", "final val acc1 %", "best val acc1 %", "final train loss")
        accs = [(r.final_val_acc1, r.best_val_acc1) for r in rows]
    body = [
        (r.key, r.status, pct(a), pct(b), num(r.final_train_loss))
        for r, (a, b) in zip(rows, accs, strict=True)
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
    uri = tracking.shown_uri(paths.tracking_uri)
    if not uri.startswith("sqlite:"):  # an MLflow server: its own address serves the UI
        web = uri.startswith(("http://", "https://"))
        return runs_view_url(uri, found[1]) if found and web else f"open {uri} (MLflow server)"
    command = f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return (
        command if found is None else f"{command}\n  then open  {runs_view_url(UI_HOST, found[1])}"
    )


SUMMARY_STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")


def study_outcome(runs: list[Any]) -> tuple[dict[str, str], dict[str, float]]:
    """What the parent run shows of its trials' runs, per loss: trial counts by status, and the
    configuration (temperature, batch size) with the highest mean best validation accuracy over
    its finished seeds, with that mean and the mean test accuracy there (chosen on validation,
    never on test; a loss with one configuration needs no choice). Returns (tags, metrics)."""
    by_loss: dict[str, list[Any]] = {}
    for run in runs:
        if tracking.TRIAL_KEY_TAG in run.data.tags:
            by_loss.setdefault(run.data.tags.get("loss", "?"), []).append(run)
    tags: dict[str, str] = {}
    metrics: dict[str, float] = {}
    for loss, group in sorted(by_loss.items()):
        for status in SUMMARY_STATUSES:
            count = sum(r.info.status == status for r in group)
            metrics[f"summary/{loss}/trials_{status.lower()}"] = float(count)
        best = _best_config([r for r in group if r.info.status == "FINISHED"])
        if best is None:
            tags[f"summary/{loss}/best"] = "none chosen: no finished trial with a val accuracy"
            continue
        (tau, batch), val, test = best
        tags[f"summary/{loss}/best_temperature"] = "n/a" if tau == "none" else tau
        tags[f"summary/{loss}/best_batch_size"] = batch
        metrics.update({f"summary/{loss}/best_val_acc1": val, f"summary/{loss}/test_acc1": test})
    vals = {k.split("/")[1]: v for k, v in metrics.items() if k.endswith("/best_val_acc1")}
    vals = {loss: v for loss, v in vals.items() if math.isfinite(v)}
    if vals:
        tags["summary/best_loss"] = max(vals, key=lambda loss: vals[loss])
    return tags, metrics


def _best_config(runs: list[Any]) -> tuple[tuple[str, str], float, float] | None:
    """((temperature, batch size), mean best val acc1, mean final test acc1) of the
    configuration chosen on validation among finished runs; NaN where nothing was logged."""
    configs: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        key = (run.data.tags.get("temperature", "none"), run.data.tags.get("batch_size", "?"))
        configs.setdefault(key, []).append(run)

    def mean(group: list[Any], metric: str) -> float:
        values = [r.data.metrics[metric] for r in group if metric in r.data.metrics]
        return sum(values) / len(values) if values else math.nan

    rows = [
        (key, mean(g, "best/val_acc1"), mean(g, "final/test_acc1")) for key, g in configs.items()
    ]
    if len(rows) == 1:
        return rows[0]
    voted = [row for row in rows if math.isfinite(row[1])]
    return max(voted, key=lambda row: row[1]) if voted else None


def log_study_outcome(mlf: Any, experiment_id: str, parent_id: str) -> None:
    """Put the study's outcome (`study_outcome`) on its parent run: tags for the chosen
    configurations (they may change on --resume, which MLflow params may not), metrics for
    the accuracies and counts, so the experiment's run list says which loss won."""
    runs = mlf.search_runs([experiment_id], max_results=50000)
    tags, metrics = study_outcome(runs)
    stale = [k for k in mlf.get_run(parent_id).data.tags if k.startswith("summary/")]
    for key in stale:
        if key not in tags:
            mlf.delete_tag(parent_id, key)
    for key, value in tags.items():
        mlf.set_tag(parent_id, key, value)
    # one step per driver session (a resumed study logs its outcome again): no step twice
    tracking.log_metrics(mlf, parent_id, metrics, step=next_step(mlf, parent_id, metrics))
