"""The convergence table in the layout of the source paper's Table 7: one block per part,
(I) the iteration from which each NC metric stays at >= 95 % of its target, as a ratio to the
trial's iterations, and (II) the iteration at which each metric reaches the converged value of
the reference (CE) trial, as a ratio to the iteration at which CE itself gets there; a row per
loss, the paper's columns (instance and weight alignment, weights/intra/inter erank) and nc1."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from ncstudy.config import ConvergenceSpec
from ncstudy.metrics.convergence import NETWORK_CLOCK_METRICS
from ncstudy.report.tables import (
    MISSING,
    SELECTION,
    Table,
    best_configs,
    chosen_trials,
    column,
    drop_single_setting,
    ordered,
    prepared,
)

DEFAULT_CLOCK_REFERENCE = ConvergenceSpec.model_fields["reference_loss"].default
# The paper's columns in its order, then nc1 (tracked by the clock, not in the paper's table).
TABLE7_COLUMNS = {
    "align_weight_inst": "Instance alignment",
    "align_weight_mean": "Weight alignment",
    "erank_weights": "Weights erank",
    "erank_intra": "Intra erank",
    "erank_inter": "Inter erank",
    "nc1": "NC1",
}
TABLE7_METRICS = tuple(TABLE7_COLUMNS)
PART_I = "(I) NC convergence to threshold (ratio to max iterations)"
PART_II = "(II) {ref} convergence to converged value (ratio to {ref} converged iteration)"
NOT_REACHED = (math.inf, math.inf)
NO_DATA = (math.nan, math.nan)
Measure = Callable[[pd.Series, str], tuple[float, float]]


def convergence(trials: pd.DataFrame) -> Table:
    """Table 7: rows (part, loss) at each loss's chosen configuration; cells: mean ratio in %
    over the finished seeds and, in brackets, the mean iteration."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    by_key = t.set_index("key")
    refs = ", ".join(str(r) for r in ordered(column(t, "clock_reference_loss").dropna()))
    parts: list[tuple[str, Measure]] = [
        (PART_I, _to_95),
        (PART_II.format(ref=refs or DEFAULT_CLOCK_REFERENCE), lambda r, m: _to_ref(r, m, by_key)),
    ]
    data, shown = [], []
    for setting in ordered(chosen["setting"]):
        for part, measure in parts:
            for loss in ordered(chosen.loc[chosen.setting == setting, "loss"]):
                sel = chosen[(chosen.setting == setting) & (chosen.loss == loss)]
                row, show = _row(sel, measure, {"setting": setting, "part": part, "loss": loss})
                data.append(row)
                shown.append(show)
    display = drop_single_setting(pd.DataFrame(shown)).rename(columns=TABLE7_COLUMNS)
    return Table(
        "convergence",
        "Convergence speed (Table 7)",
        _caption(refs, (column(t, "steps_to_ref_by") == "report").any()),
        drop_single_setting(pd.DataFrame(data)),
        display,
    )


def _row(sel: pd.DataFrame, measure: Measure, keys: dict) -> tuple[dict, dict]:
    """The numbers (`<metric> %`, `<metric> steps`) and the cells of one (part, loss) row."""
    row, show = dict(keys), dict(keys)
    for m in TABLE7_METRICS:
        got = [measure(r, m) for _, r in sel.iterrows()]
        show[m] = _cell(got)
        ok = [g for g in got if np.isfinite(g[0])]
        row[f"{m} %"] = np.mean([g[0] for g in ok]) if ok else np.nan
        row[f"{m} steps"] = np.mean([g[1] for g in ok]) if ok else np.nan
    return row, show


def _caption(refs: str, by_report: bool) -> str:
    note = (
        " (II) is computed by the report from the clock histories for the finished trials the "
        "study did not log it on (it logs it when the whole study completes)."
        if by_report
        else ""
    )
    return (
        "The source paper's Table 7 layout. (I) the iteration from which the EWMA of the "
        "closeness to the NC target stays >= 95 % (steps_to_95), as % of the trial's training "
        "iterations; (II) the first iteration at which the trial's EWMA reaches the converged "
        "(final EWMA) value of its reference trial (steps_to_ref; the "
        f"{refs or DEFAULT_CLOCK_REFERENCE} trial with the same seed and grid point, "
        "evaluation.convergence.reference_loss), as % of the iteration at which the reference "
        "itself reaches it. Measured by the clock pass every evaluation.convergence.every_steps "
        "iterations on a fixed training subset, with an EWMA per iteration (ewma_alpha), so the "
        "numbers do not depend on evaluation.every. Iterations in brackets; mean over finished "
        f"seeds at each loss's {SELECTION}; [k/n]: reached by k of n seeds. not reached: never "
        f"within training. NC1 is tracked by the clock but not in the paper's table. {MISSING}: "
        f"no reference or no data.{note}"
    )


def _total_steps(row: pd.Series) -> float:
    """The trial's training iterations: `steps_total` (network trials), else `epochs` (UFM
    trials count iterations there, and so did the clock of runs logged before steps_total)."""
    total = row.get("steps_total", np.nan)
    return float(total) if np.isfinite(total) else float(row["epochs"])


def _to_95(row: pd.Series, metric: str) -> tuple[float, float]:
    if (
        metric not in NETWORK_CLOCK_METRICS  # the metrics whose steps_to_95 training logs
        or f"nc/{metric}" not in row
        or not np.isfinite(row[f"nc/{metric}"])
    ):
        return NO_DATA
    steps = row.get(f"steps_to_95/{metric}", np.nan)
    if not np.isfinite(steps):
        return NOT_REACHED
    return 100 * steps / _total_steps(row), steps


def _to_ref(row: pd.Series, metric: str, by_key: pd.DataFrame) -> tuple[float, float]:
    ref = row.get("reference")
    if not isinstance(ref, str) or ref not in by_key.index:
        return NO_DATA
    ref_steps = by_key.loc[ref].get(f"steps_to_ref/{metric}", np.nan)
    if not np.isfinite(ref_steps) or ref_steps <= 0:
        return NO_DATA
    steps = row.get(f"steps_to_ref/{metric}", np.nan)
    if not np.isfinite(steps):
        return NOT_REACHED
    return 100 * steps / ref_steps, steps


def _cell(got: list[tuple[float, float]]) -> str:
    """`ratio % (iterations)` averaged over the seeds that reached it."""
    known = [g for g in got if not np.isnan(g[0])]
    ok = [g for g in known if np.isfinite(g[0])]
    if not known:
        return MISSING
    if not ok:
        return "not reached"
    text = f"{np.mean([g[0] for g in ok]):.1f} % ({np.mean([g[1] for g in ok]):g})"
    return text if len(ok) == len(known) else f"{text} [{len(ok)}/{len(known)}]"
