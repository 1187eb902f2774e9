"""One report over several studies: the source paper's Table 1 across datasets (CIFAR-10,
CIFAR-100, ImageNet-100, ImageNet-1K), each at the paper's fixed batch size for that dataset
(Appendix E: 512 on CIFAR, 1024 on ImageNet-100, the best of 2048 / 4096 / 8192 on ImageNet-1K)
and the best temperature, chosen by validation accuracy as everywhere in the report."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ncstudy.report.html import render_index
from ncstudy.report.load import StudyData
from ncstudy.report.markdown import table_markdown, write_tables
from ncstudy.report.tables import (
    MISSING,
    NO_VAL_CELL,
    Table,
    best_configs,
    config_means,
    guarded,
    ordered,
    pct,
    prepared,
    trials_table,
)

# dataset name -> (the paper's column label, the batch sizes Table 1 reports, in its order)
PAPER_DATASETS = {
    "cifar10": ("CIFAR-10", (512,)),
    "cifar10_jpeg": ("CIFAR-10", (512,)),
    "cifar100": ("CIFAR-100", (512,)),
    "imagenet100": ("ImageNet-100", (1024,)),
    "imagenet": ("ImageNet-1K", (2048, 4096, 8192)),
}
ORDER = ("CIFAR-10", "CIFAR-100", "ImageNet-100", "ImageNet-1K")
TITLE = "Accuracy across datasets (Table 1)"


@dataclass(frozen=True)
class Column:
    """One column of the table: a (study, setting) pair, its label and the batch sizes used."""

    study: str
    setting: str
    label: str
    batches: tuple[int, ...] | None  # None: every batch size of the study (not a paper dataset)


def columns(trials: pd.DataFrame) -> list[Column]:
    """The (study, setting) columns in the paper's dataset order, others after them; a label
    repeated by several studies carries the study's name."""
    found = []
    for (study, setting), rows in trials.groupby(["study", "setting"], sort=False):
        dataset = str(rows["dataset"].iloc[0])
        label, batches = PAPER_DATASETS.get(dataset, (dataset, None))
        rest = setting[len(dataset) :] if setting.startswith(dataset) else f" {setting}"
        found.append(Column(study, setting, f"{label}{rest}", batches))
    rank = {name: i for i, name in enumerate(ORDER)}
    found.sort(key=lambda c: rank.get(c.label.split(" ")[0], len(ORDER)))
    labels = [c.label for c in found]
    return [
        Column(c.study, c.setting, f"{c.label} ({c.study})", c.batches)
        if labels.count(c.label) > 1
        else c
        for c in found
    ]


def _cell(trials: pd.DataFrame, col: Column, loss: str) -> tuple[dict, str]:
    """The numeric fields and the display string of one (column, loss) cell."""
    here = trials[(trials.study == col.study) & (trials.setting == col.setting)]
    here = here[here.loss == loss]
    if col.batches is not None:
        here = here[here.batch_size.isin(col.batches)]
    best = best_configs(here)
    if here.empty or best.empty:  # nothing finished, or several configurations and no val
        none = {"test": np.nan, "tau": None, "batch": None}
        return none, NO_VAL_CELL if not config_means(here).empty else MISSING
    r = best.iloc[0]
    tau = "" if r["tau"] == "none" else f"τ={r['tau']}, "
    return {"test": 100 * r["test"], "tau": r["tau"], "batch": r["batch_size"]}, (
        f"{pct(r['test'])} ({tau}b={r['batch_size']})"
    )


def across_datasets(trials: pd.DataFrame) -> Table:
    """Table 1 over several studies: losses (rows) x datasets (columns)."""
    t = prepared(trials)
    cols = columns(t)
    data, shown = [], []
    for loss in ordered(t["loss"]):
        row, show = {"loss": loss}, {"loss": loss}
        for col in cols:
            fields, text = _cell(t, col, loss)
            row[col.label] = fields["test"]
            row[f"{col.label} temperature"] = fields["tau"]
            row[f"{col.label} batch size"] = fields["batch"]
            show[col.label] = text
        data.append(row)
        shown.append(show)
    batches = "; ".join(
        f"{c.label}: b = {' / '.join(map(str, c.batches)) if c.batches else 'any'}" for c in cols
    )
    return Table(
        "best_across_datasets",
        TITLE,
        "Test top-1 accuracy (%, mean over finished seeds) of each loss per dataset, at the "
        "source paper's fixed batch size for that dataset (Appendix E; ImageNet-1K: the best "
        "of three) and the temperature (and batch size, where several are allowed) with the "
        "highest mean best validation accuracy, never chosen by test accuracy; in brackets. "
        f"Batch sizes used: {batches} (any: not one of the paper's datasets, every batch size "
        f"of its study). {MISSING}: no finished trial of that loss at those batch sizes; "
        f"{NO_VAL_CELL}: several configurations and no validation accuracy to choose one.",
        pd.DataFrame(data),
        pd.DataFrame(shown, columns=["loss", *(c.label for c in cols)]),
    )


def combined_trials(studies: list[StudyData]) -> pd.DataFrame:
    """Every study's trials in one frame, with a `study` column (first) and study-unique keys."""
    frames = []
    for data in studies:
        frame = data.trials.copy()
        frame.insert(0, "study", data.name)
        frame["key"] = [f"{data.name}/{k}" for k in frame["key"]]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True, sort=False)


def across_tables(trials: pd.DataFrame) -> list[Table]:
    """The tables of a multi-study report: Table 1 across datasets and every trial."""
    table = guarded("best_across_datasets", TITLE, lambda: across_datasets(trials))
    return table + guarded("trials", "Trials", lambda: trials_table(trials))


def write_across_report(studies: list[StudyData], out_dir: Path) -> tuple[Path, list[Table]]:
    """Write the multi-study report (tables as CSV and Markdown, report.md, index.html) to
    `out_dir`; nothing is logged to MLflow (no single parent run owns it)."""
    trials = combined_trials(studies)
    tables = across_tables(trials)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tables(tables, out_dir / "tables")
    trials.to_csv(out_dir / "tables" / "trials_full.csv", index=False)
    names = ", ".join(f"'{d.name}'" for d in studies)
    meta = [
        f"Studies {names}: {len(trials)} trials.",
        "Accuracy = test top-1 at the end of training, in %; every best temperature or "
        "configuration is chosen by validation accuracy, never by test accuracy.",
        f"Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by python -m ncstudy.report.",
    ]
    alerts = [f"Warning: {d.name}: {w}" for d in studies for w in d.warnings]
    markdown = [f"# Report: {names}\n", *(f"> **{a}**\n" for a in alerts)]
    markdown += [m + "\n" for m in meta] + [table_markdown(t) for t in tables]
    (out_dir / "report.md").write_text("\n".join(markdown))
    index = out_dir / "index.html"
    index.write_text(render_index(f"Report: {names}", meta, tables, [], alerts))
    return index, tables
