"""The report's tables, laid out like the source paper's (Tables 1, 2, 3, 7, 9-11, 13).

Every table has a numeric `data` frame (written as CSV) and a `display` frame of strings with
the same rows and columns where possible (Markdown and HTML; `**x**` marks bold). Accuracy is
the test top-1 accuracy at the end of training; a best temperature or configuration is always
chosen by the best validation accuracy (`best/val_acc1`), never by test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

TEST = "final/test_acc1"
VAL = "best/val_acc1"
MISSING = "—"  # expected but no finished value (failed, unfinished or never started)
NO_VAL_CELL = "no val"  # several temperatures, no validation accuracy to choose one
NA = ""  # not part of the grid (e.g. a temperature for a loss without one)
SCL_CLASSIFIERS = (("LP", "lp"), ("NLP", "nlp"), ("FP", "fp"))
CONFIG = ["setting", "loss", "tau", "batch_size"]
SELECTION = (
    "best configuration (the temperature and batch size with the highest mean best validation "
    "accuracy)"
)


@dataclass(frozen=True)
class Table:
    """One report table: file stem, title, caption, numeric data (CSV) and strings (display)."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    unavailable: str | None = None  # why the table cannot be shown ("not available because")


def unavailable(name: str, title: str, reason: str) -> Table:
    """A table that cannot be built for this study, with the reason shown in its place."""
    empty = pd.DataFrame()
    return Table(name, title, "", empty, empty, unavailable=reason)


def tau_label(t: float) -> str:
    """A temperature as a column label: `0.2`, or `none` for losses without one."""
    return "none" if t is None or (isinstance(t, float) and math.isnan(t)) else f"{t:g}"


def pct(v: float) -> str:
    """A fraction as a percentage with two decimals, or the missing mark."""
    return MISSING if v is None or not np.isfinite(v) else f"{100 * v:.2f}"


def num(v: float) -> str:
    """A metric value with three decimals (one for large values), or the missing mark."""
    if v is None or not np.isfinite(v):
        return MISSING
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"


def column(frame: pd.DataFrame, name: str) -> pd.Series:
    """A metric column, all NaN if no trial logged it."""
    return frame[name] if name in frame else pd.Series(np.nan, index=frame.index, dtype=float)


def prepared(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with a `tau` label column (NaN-free grouping key)."""
    out = trials.copy()
    out["tau"] = [tau_label(t) for t in out["temperature"]]
    return out


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ended normally."""
    return trials[trials["status"] == "FINISHED"]


def ordered(values: pd.Series) -> list:
    """Distinct values in order of first appearance (the grid's order)."""
    return list(dict.fromkeys(values))


def _taus(values: pd.Series) -> list[str]:
    labels = set(values)
    numeric = sorted((t for t in labels if t != "none"), key=float)
    return (["none"] if "none" in labels else []) + numeric


def config_means(trials: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (setting, loss, tau, batch size), over finished seeds: mean best val,
    mean test accuracy, their seed count."""
    done = finished(trials).assign(val=lambda f: column(f, VAL), test=lambda f: column(f, TEST))
    grouped = done.groupby(CONFIG, sort=False)
    return grouped.agg(
        val=("val", "mean"), test=("test", "mean"), n=("test", "count")
    ).reset_index()


def best_configs(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (setting, loss): the configuration with the highest mean best validation accuracy;
    a (setting, loss) with a single configuration needs no choice (nor a validation split)."""
    means = config_means(trials)
    if means.empty:
        return means
    groups = means.groupby(["setting", "loss"], sort=False)
    single = groups["val"].transform("size") == 1
    voted = means[~single].dropna(subset=["val"])
    idx = voted.groupby(["setting", "loss"], sort=False)["val"].idxmax()
    keep = sorted([*means.index[single], *idx])
    return means.loc[keep].reset_index(drop=True)


NO_VALIDATION = (
    "no trial logged a validation accuracy (dataset.val_fraction: 0, or no finished trial), "
    "so no configuration can be chosen among several (never by test accuracy)"
)


def selection_problem(trials: pd.DataFrame) -> str | None:
    """Why a table at each loss's best configuration cannot be built, or None: a (setting,
    loss) with several configurations but no validation accuracy to choose among them."""
    means = config_means(prepared(trials))
    if means.empty:
        return "no trial finished"
    sizes = means.groupby(["setting", "loss"], sort=False)["val"].agg(["size", "count"])
    stuck = sizes[(sizes["size"] > 1) & (sizes["count"] == 0)]
    if stuck.empty:
        return None
    names = ", ".join(f"{loss} ({setting})" for setting, loss in stuck.index[:4])
    return f"{NO_VALIDATION}: {names} {'have' if len(stuck) > 1 else 'has'} several"


def chosen_trials(trials: pd.DataFrame, best: pd.DataFrame) -> pd.DataFrame:
    """The finished trials (all seeds) of the chosen configurations."""
    return finished(trials).merge(best[CONFIG], on=CONFIG)


def trials_table(trials: pd.DataFrame) -> Table:
    """Every trial with its status and accuracies (the study at a glance)."""
    t = prepared(trials)
    data = pd.DataFrame(
        {
            "trial": t["key"],
            "status": t["status"],
            "setting": t["setting"],
            "loss": t["loss"],
            "temperature": t["tau"],
            "batch size": t["batch_size"],
            "seed": t["seed"],
            "best val acc1 %": 100 * column(t, VAL),
            "test acc1 %": 100 * column(t, TEST),
        }
    )
    display = data.astype(object)
    for c in ("best val acc1 %", "test acc1 %"):
        display[c] = [pct(v / 100) for v in data[c]]
    return Table(
        "trials",
        "Trials",
        "Every trial of the study. Test accuracy at the end of training; best validation "
        f"accuracy over the evaluations. {MISSING}: the trial did not finish.",
        data,
        display,
    )


def accuracy_by_temperature(trials: pd.DataFrame) -> Table:
    """Tables 9-10: test accuracy by loss (rows, per batch size) and temperature (columns);
    bold marks the temperature with the best validation accuracy."""
    t = prepared(trials)
    means = config_means(t)
    taus = _taus(t["tau"])
    rows, shown = [], []
    for (setting, loss, batch), cell in t.groupby(["setting", "loss", "batch_size"], sort=False):
        m = means[
            (means.setting == setting) & (means.loss == loss) & (means.batch_size == batch)
        ].set_index("tau")
        best = m["val"].idxmax() if m["val"].notna().any() else None
        seeds = cell["tau"].value_counts()  # trials per temperature in the grid
        head = {"setting": setting, "loss": loss, "batch size": batch}
        rows.append({**head, **{tau: 100 * m["test"].get(tau, np.nan) for tau in taus}})
        shown.append(
            {**head, **{tau: _cell(m, tau, seeds.get(tau, 0), tau == best) for tau in taus}}
        )
    return Table(
        "accuracy_temperature",
        "Accuracy by temperature (Tables 9-10)",
        "Test top-1 accuracy (%, mean over finished seeds) by loss and batch size (rows) and "
        "temperature (columns). Bold: the temperature with the best mean validation accuracy "
        f"(never chosen by test accuracy). {MISSING}: no finished trial; (k/n seeds): only k "
        "of the grid's n seeds finished; empty: not in the grid.",
        drop_single_setting(pd.DataFrame(rows)),
        drop_single_setting(pd.DataFrame(shown)),
    )


def _cell(m: pd.DataFrame, tau: str, expected: int, bold: bool) -> str:
    """A temperature cell: empty off the grid, `—` without a finished seed, `(k/n seeds)`
    when only some seeds finished."""
    if expected == 0:
        return NA
    text = pct(m["test"].get(tau, np.nan))
    if text == MISSING:
        return text
    text = f"**{text}**" if bold else text
    n = int(m["n"].get(tau, 0))
    return text if n >= expected else f"{text} ({n}/{expected} seeds)"


def accuracy_by_batch(trials: pd.DataFrame) -> Table:
    """Table 11: test accuracy by loss (rows) and batch size (columns), each at the temperature
    with the best validation accuracy for that loss and batch size."""
    t = prepared(trials)
    means = config_means(t)
    batches = sorted(set(t["batch_size"]))
    rows, shown = [], []
    for (setting, loss), cell in t.groupby(["setting", "loss"], sort=False):
        head = {"setting": setting, "loss": loss}
        row, show = dict(head), dict(head)
        for b in batches:
            m = means[(means.setting == setting) & (means.loss == loss) & (means.batch_size == b)]
            in_grid = b in set(cell["batch_size"])
            if len(m) > 1 and m["val"].notna().any():
                m = m.loc[[m["val"].idxmax()]]
            if len(m) != 1:  # none finished, or several temperatures and no validation
                row[str(b)] = np.nan
                show[str(b)] = (NO_VAL_CELL if len(m) else MISSING) if in_grid else NA
                continue
            top = m.iloc[0]
            row[str(b)] = 100 * top["test"]
            show[str(b)] = pct(top["test"]) + ("" if top["tau"] == "none" else f" (τ {top['tau']})")
        rows.append(row)
        shown.append(show)
    return Table(
        "accuracy_batch",
        "Accuracy by batch size (Table 11)",
        "Test top-1 accuracy (%, mean over finished seeds) by loss and batch size, each at the "
        "temperature (τ) with the best mean validation accuracy for that loss and batch size. "
        f"{MISSING}: no finished trial; {NO_VAL_CELL}: several temperatures and no validation "
        "accuracy to choose among them.",
        drop_single_setting(pd.DataFrame(rows)),
        drop_single_setting(pd.DataFrame(shown)),
    )


def best_temperature(trials: pd.DataFrame) -> Table:
    """Table 1: per loss (rows) and setting (columns), the test accuracy at the best
    temperature and batch size (chosen by validation accuracy)."""
    t = prepared(trials)
    best = best_configs(t)
    data: dict[str, dict] = {}
    shown: dict[str, dict] = {}
    for loss in ordered(t["loss"]):
        data[loss], shown[loss] = {"loss": loss}, {"loss": loss}
        for setting in ordered(t["setting"]):
            b = best[(best.setting == setting) & (best.loss == loss)]
            if b.empty:
                data[loss].update({setting: np.nan, f"{setting} temperature": None})
                data[loss].update({f"{setting} batch size": None, f"{setting} best val": np.nan})
                shown[loss][setting] = MISSING
                continue
            r = b.iloc[0]
            data[loss].update({setting: 100 * r["test"], f"{setting} temperature": r["tau"]})
            data[loss].update({f"{setting} batch size": r["batch_size"]})
            data[loss][f"{setting} best val"] = 100 * r["val"]
            tau = "" if r["tau"] == "none" else f"τ={r['tau']}, "
            shown[loss][setting] = f"{pct(r['test'])} ({tau}b={r['batch_size']})"
    return Table(
        "best_temperature",
        "Best temperature per loss (Table 1)",
        f"Test top-1 accuracy (%, mean over finished seeds) of each loss with its {SELECTION} "
        f"(shown in brackets). {MISSING}: no finished trial.",
        pd.DataFrame(list(data.values())),
        pd.DataFrame(list(shown.values())),
    )


def seed_spread(trials: pd.DataFrame) -> Table:
    """Table 13: mean ± sample std of the test accuracy over seeds at the chosen configuration."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    data, shown = [], []
    for loss in ordered(t["loss"]):
        row, show = {"loss": loss}, {"loss": loss}
        for setting in ordered(t["setting"]):
            acc = 100 * column(chosen[(chosen.loss == loss) & (chosen.setting == setting)], TEST)
            acc = acc.dropna()
            mean, std, n = acc.mean(), acc.std(ddof=1), len(acc)
            row.update({f"{setting} mean": mean, f"{setting} std": std, f"{setting} n": n})
            if n == 0:
                show[setting] = MISSING
            elif n == 1:
                show[setting] = f"{mean:.2f} (n=1)"
            else:
                show[setting] = f"{mean:.2f} ± {std:.2f} (n={n})"
        data.append(row)
        shown.append(show)
    return Table(
        "seeds",
        "Mean ± std over seeds (Table 13)",
        f"Test top-1 accuracy (%) over finished seeds: mean ± sample standard deviation (n "
        f"seeds), at each loss's {SELECTION}. {MISSING}: no finished trial.",
        pd.DataFrame(data),
        pd.DataFrame(shown),
    )


def scl_classifiers(trials: pd.DataFrame) -> Table | None:
    """Table 2: SCL's three classifiers (linear probe, normalised probe, fixed prototypes);
    None (no table) when no trial logged them (no SCL loss in the study)."""
    t = prepared(trials)
    scl = [
        loss
        for loss in ordered(t["loss"])
        if column(t[t.loss == loss], "final/val_fp_acc1").notna().any()
    ]
    if not scl:
        return None
    chosen = chosen_trials(t, best_configs(t[t.loss.isin(scl)]))
    data, shown = [], []
    for loss in scl:
        for label, short in SCL_CLASSIFIERS:
            row, show = {"classifier": label, "loss": loss}, {"classifier": label, "loss": loss}
            for setting in ordered(t["setting"]):
                sel = chosen[(chosen.loss == loss) & (chosen.setting == setting)]
                v = column(sel, f"final/test_{short}_acc1").mean()
                row[setting], show[setting] = 100 * v, pct(v)
            data.append(row)
            shown.append(show)
    return Table(
        "scl_classifiers",
        "SCL: fixed prototypes vs linear probes (Table 2)",
        "Test top-1 accuracy (%, mean over finished seeds) of the SCL encoder with a linear "
        "probe (LP), a normalised linear probe (NLP) and fixed class-mean prototypes (FP), at "
        "the configuration with the best FP validation accuracy.",
        pd.DataFrame(data, columns=["classifier", "loss", *ordered(t["setting"])]),
        pd.DataFrame(shown, columns=["classifier", "loss", *ordered(t["setting"])]),
    )


def failures(trials: pd.DataFrame) -> Table:
    """Trials that did not finish, with their reasons."""
    bad = trials[trials["status"] != "FINISHED"]
    reasons = [_reason(s, r) for s, r in zip(bad["status"], bad["reason"], strict=True)]
    frame = pd.DataFrame({"trial": bad["key"], "status": bad["status"], "reason": reasons})
    return Table(
        "failures",
        "Failed and unfinished trials",
        "Trials without a finished run and why (the `ncstudy.failure_reason` tag, last line).",
        frame,
        frame.copy(),
    )


def _reason(status: str, reason: object) -> str:
    if isinstance(reason, str) and reason.strip():
        return reason.strip().splitlines()[-1][:300]
    return {
        "NOT STARTED": "never started (the study is unfinished or was interrupted)",
        "RUNNING": "still running, or its process ended without closing the run",
        "KILLED": "interrupted",
    }.get(status, "no reason recorded")


def formatted(frame: pd.DataFrame, cols: tuple[str, ...], fmt: Callable) -> pd.DataFrame:
    """A copy of `frame` with `cols` turned into display strings by `fmt`."""
    out = frame.astype(object)
    for c in cols:
        out[c] = [fmt(v) for v in frame[c]]
    return out


def drop_single_setting(frame: pd.DataFrame) -> pd.DataFrame:
    """Without the `setting` column when the whole study has one setting."""
    if "setting" in frame and frame["setting"].nunique() <= 1:
        return frame.drop(columns="setting")
    return frame


def guarded(name: str, title: str, build: Callable[[], object]) -> list[Table]:
    """The table(s) `build` returns (none for None), or one `unavailable` table naming the
    error that stopped it (a report never ends in a traceback)."""
    try:
        out = build()
    except Exception as err:  # shown in the report in the table's place, not swallowed
        return [unavailable(name, title, f"building it failed ({type(err).__name__}: {err})")]
    return [] if out is None else list(out) if isinstance(out, list) else [out]
