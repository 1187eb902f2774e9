"""Write a study's report to a folder (tables as CSV and Markdown, figures, index.html) and log
the same files as artifacts of the study's parent run."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from ncstudy.report import figures as draw_figures
from ncstudy.report import paper002, paper003, paper004
from ncstudy.report.downstream_tables import downstream_tables
from ncstudy.report.figures import FigureFile
from ncstudy.report.html import METRICS_DOC, render_index
from ncstudy.report.load import StudyData, open_client
from ncstudy.report.markdown import table_markdown, write_tables
from ncstudy.report.nc_tables import nc_final, nc_trials
from ncstudy.report.paper002_finetune import finetune_table
from ncstudy.report.probe_table import probe_protocols
from ncstudy.report.search_view import is_search, search_figures, search_tables
from ncstudy.report.table7 import convergence
from ncstudy.report.tables import (
    Table,
    accuracy_by_batch,
    accuracy_by_temperature,
    best_temperature,
    failures,
    guarded,
    scl_classifiers,
    seed_spread,
    selection_problem,
    trials_table,
    unavailable,
)
from ncstudy.tracking import shown_uri

ARTIFACT_DIR = "report"


@dataclass(frozen=True)
class Report:
    """What was written: the folder, the index page, the tables, the figures, every file."""

    out_dir: Path
    index: Path
    tables: list[Table]
    figures: list[FigureFile]
    files: list[Path]
    logged_to: str | None  # the parent run id the files were logged to, if any


def all_tables(trials: pd.DataFrame) -> list[Table]:
    """Every table of a grid study's report, in reading order (a search study has its own,
    report.search_view)."""
    chosen = selection_problem(trials)  # tables at each loss's best configuration need one
    parts = [
        ("trials", "Trials", lambda: trials_table(trials), None),
        ("failures", "Failed and unfinished trials", lambda: failures(trials), None),
        ("best_temperature", "Best temperature per loss (Table 1)",
         lambda: best_temperature(trials), chosen),
        ("accuracy_temperature", "Accuracy by temperature (Tables 9-10)",
         lambda: accuracy_by_temperature(trials), None),
        ("accuracy_batch", "Accuracy by batch size (Table 11)",
         lambda: accuracy_by_batch(trials), None),
        ("seeds", "Mean ± std over seeds (Table 13)", lambda: seed_spread(trials), chosen),
        ("scl_classifiers", "SCL: fixed prototypes vs linear probes (Table 2)",
         lambda: scl_classifiers(trials), chosen),
        ("probe_protocols", "Standard vs cached linear probing (Table 14)",
         lambda: probe_protocols(trials), chosen),
        ("nc_final", "Neural collapse at the end of training (Table 3)",
         lambda: nc_final(trials), chosen),
        ("convergence", "Convergence speed (Table 7)", lambda: convergence(trials), chosen),
        ("nc_trials", "NC metrics of every trial", lambda: nc_trials(trials), None),
        ("downstream", "Downstream evaluations (Tables 4-6)",
         lambda: downstream_tables(trials), chosen),
        ("finetune_ood", "Fine-tuning: ID and OOD accuracy (Jiang et al. Sec. 5)",
         lambda: finetune_table(trials), None),
    ]  # fmt: skip
    tables = []
    for name, title, build, reason in parts:
        built = guarded(name, title, build)
        if reason is not None:  # only the tables the study would have, each saying why not
            built = [unavailable(t.name, t.title, reason) for t in built]
        tables += built
    return tables


def all_figures(data: Any, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Write every figure of the report (a StudyData) to `out_dir`; a search study has its
    own. Returns the figures and, for each kind that could not be drawn, why (the report shows
    it; it never ends in a traceback)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trials, histories = data.trials, data.histories
    kinds = [("search", lambda: search_figures(data, out_dir))] if is_search(data.spec) else [
        ("temperature x batch-size heatmaps", lambda: draw_figures.heatmaps(trials, out_dir)),
        ("NC curves", lambda: draw_figures.nc_curves(trials, histories, out_dir)),
        ("NC curves by temperature", lambda: draw_figures.nc_by_axis(trials, histories, out_dir)),
        ("seed spreads", lambda: draw_figures.seed_spreads(trials, out_dir)),
        ("paper 004", lambda: paper004.figures(data, out_dir)),
        ("generalised NC (Jiang et al.)", lambda: paper002.figures(data, out_dir)),
        ("paper 003", lambda: paper003.figures(data, out_dir)),  # Yaras et al.'s, where they fit
    ]  # fmt: skip
    drawn, problems = [], []
    for kind, draw in kinds:
        try:
            drawn += draw()
        except Exception as err:  # shown at the top of the report, not swallowed
            problems.append(f"the {kind} figures could not be drawn ({type(err).__name__}: {err})")
    return drawn, problems


def status_line(data: StudyData) -> str:
    """`N trials: a FINISHED, b FAILED, ...`."""
    counts = data.trials["status"].value_counts()
    parts = ", ".join(f"{n} {status}" for status, n in counts.items())
    return f"{len(data.trials)} trials: {parts or 'none'}"


def selection_line(spec: Any) -> str:
    """How the report picks its best configurations (never by test accuracy)."""
    if is_search(spec):
        return (
            f"An Optuna search ({spec.search.sampler} sampler, {spec.search.pruner} pruner) per "
            f"loss on {spec.search.metric}; the best trial is chosen by it, never by test "
            "accuracy. Accuracies in %."
        )
    return (
        "Accuracy = test top-1 at the end of training, in %; every best temperature or "
        "configuration is chosen by validation accuracy, never by test accuracy."
    )


def copy_metrics_doc(out_dir: Path) -> Path:
    """docs/metrics.md (shipped in the package as ncstudy/report/metrics.md) next to the report,
    so its links to the metric definitions work offline and in MLflow's artifact view."""
    target = out_dir / METRICS_DOC
    target.write_text(resources.files("ncstudy.report").joinpath("metrics.md").read_text())
    return target


def write_report(data: StudyData, out_dir: Path, log_to_mlflow: bool = True) -> Report:
    """Write every table and figure of the study to `out_dir` and, unless disabled, log them to
    the parent run under `report/`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = search_tables(data) if is_search(data.spec) else all_tables(data.trials)
    files = write_tables(tables, out_dir / "tables")
    figures, problems = all_figures(data, out_dir / "figures")
    files += [f.path for f in figures]
    files.append(copy_metrics_doc(out_dir))
    full = out_dir / "tables" / "trials_full.csv"
    data.trials.to_csv(full, index=False)
    files.append(full)

    meta = [
        f"Study '{data.name}' — {status_line(data)}.",
        f"MLflow: {shown_uri(data.tracking_uri)}, experiment {data.experiment_id}, parent run "
        f"{data.parent_run_id or '(none)'}.",
        selection_line(data.spec),
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by python -m ncstudy.report.",
    ]
    alerts = [f"Warning: {w}" for w in (*data.warnings, *problems)]
    markdown = [f"# Report: {data.name}\n", *(f"> **{a}**\n" for a in alerts)]
    markdown += [*(m + "\n" for m in meta)]
    markdown += [f"Metric definitions, ideal values and sources: [{METRICS_DOC}]({METRICS_DOC}).\n"]
    markdown += [table_markdown(t) for t in tables]
    markdown += [
        f"## {f.title}\n\n{f.caption}\n\n![{f.title}](figures/{f.path.name})\n" for f in figures
    ]
    report_md = out_dir / "report.md"
    report_md.write_text("\n".join(markdown))
    index = out_dir / "index.html"
    index.write_text(render_index(f"Report: {data.name}", meta, tables, figures, alerts))
    files += [report_md, index]

    logged_to = None
    if log_to_mlflow and data.parent_run_id:
        mlf = open_client(data.tracking_uri)
        for path in files:
            sub = path.parent.relative_to(out_dir).as_posix()
            target = ARTIFACT_DIR if sub == "." else f"{ARTIFACT_DIR}/{sub}"
            mlf.log_artifact(data.parent_run_id, str(path), target)
        logged_to = data.parent_run_id
    return Report(out_dir, index, tables, figures, files, logged_to)
