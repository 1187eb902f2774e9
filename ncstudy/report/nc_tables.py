"""The NC tables of the report: metrics at the end of training (the source paper's Table 3),
per trial, and the convergence clock (Table 7)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from ncstudy.config import ConvergenceSpec
from ncstudy.metrics import metric_target
from ncstudy.metrics.compute import WEIGHT_METRICS
from ncstudy.metrics.convergence import NETWORK_CLOCK_METRICS
from ncstudy.report.tables import (
    MISSING,
    SELECTION,
    Table,
    best_configs,
    chosen_trials,
    column,
    drop_single_setting,
    formatted,
    num,
    ordered,
    prepared,
)

DEFAULT_CLOCK_REFERENCE = ConvergenceSpec.model_fields["reference_loss"].default
TABLE3_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "mir_paper",
    "hdr_paper",
    "nc1",
    "nc2_etf_dist_means",
    "nc2_etf_dist_weights",
    "nc3",
    "nc4",
    "mir",
    "hdr",
)
# The metrics an SCL trial logs for its linear probe as the classifier (`nc/lp/<metric>`): the
# weight-dependent ones and nc4 (ncstudy.evaluate.passes.probe_nc_metrics).
PROBE_METRICS = frozenset(WEIGHT_METRICS) | {"nc4"}
TABLE7_METRICS = ("align_weight_inst", "align_weight_mean", "erank_weights", "erank_intra")
TABLE7_METRICS += ("erank_inter", "nc1")


def nc_final(trials: pd.DataFrame) -> Table:
    """Table 3: NC metrics at the end of training per loss (best configuration, mean over
    seeds), after a `perfect NC` row per setting; an SCL loss also gets its `+ LP` row."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    data = []
    for setting in ordered(t["setting"]):
        k = t.loc[t.setting == setting, "num_classes"].iloc[0]
        if np.isfinite(k):
            data.append({"setting": setting, "loss": "perfect NC", **_targets(int(k))})
        for loss in ordered(t.loc[t.setting == setting, "loss"]):
            sel = chosen[(chosen.loss == loss) & (chosen.setting == setting)]
            data.append(
                {"setting": setting, "loss": loss}
                | {m: column(sel, f"nc/{m}").mean() for m in TABLE3_METRICS}
            )
            if column(sel, "nc/lp/nc3").notna().any():  # an SCL trial with its probe metrics
                data.append({"setting": setting, "loss": f"{loss} + LP"} | _probe_row(sel))
    frame = pd.DataFrame(data, columns=["setting", "loss", *TABLE3_METRICS])
    return Table(
        "nc_final",
        "Neural collapse at the end of training (Table 3)",
        f"NC metrics on the training set after the last epoch, at each loss's {SELECTION}, "
        "mean over finished seeds. The paper's columns: Intra/Inter/Weights effective rank = "
        "erank_intra/erank_inter/erank_weights, alignment Weight = align_weight_mean, Instance "
        "= align_weight_inst, MIR/HDR = mir_paper/hdr_paper (the paper's variants, as its "
        "Table 3 reports them; mir/hdr, centred by the mean of the class means, in the last "
        "columns); definitions in metrics.md (docs/metrics.md). An SCL loss's own row has its "
        "fixed class-mean prototypes as the classifier (the paper's SCL w/o probing); its "
        "`+ LP` row has the linear probe trained on the frozen encoder (SCL w probing): the "
        "classifier-dependent metrics and nc4 of the probe; the probe acts on the encoder "
        f"output, whose feature-only metrics are not logged ({MISSING}). {MISSING}: no "
        "finished trial (or no target, in the perfect-NC row).",
        drop_single_setting(frame),
        drop_single_setting(formatted(frame, TABLE3_METRICS, num)),
    )


def _probe_row(sel: pd.DataFrame) -> dict[str, float]:
    """The Table 3 metrics of the linear probe as the classifier (`nc/lp/<metric>`), seed mean;
    NaN for the feature-only metrics (not logged for the encoder output the probe reads)."""
    return {
        m: column(sel, f"nc/lp/{m}").mean() if m in PROBE_METRICS else np.nan
        for m in TABLE3_METRICS
    }


def _targets(num_classes: int) -> dict[str, float]:
    out = {}
    for m in TABLE3_METRICS:
        try:
            out[m] = metric_target(m, num_classes)
        except ValueError:
            out[m] = np.nan
    return out


def nc_trials(trials: pd.DataFrame) -> Table:
    """The Table 3 metrics of every trial (last logged value; unfinished trials included)."""
    t = prepared(trials)
    frame = pd.DataFrame({"trial": t["key"], "status": t["status"]})
    for m in TABLE3_METRICS:
        frame[m] = column(t, f"nc/{m}").to_numpy()
    return Table(
        "nc_trials",
        "NC metrics of every trial",
        "The last logged value of each NC metric per trial (for an unfinished trial: at its "
        f"last evaluation). {MISSING}: never evaluated.",
        frame,
        formatted(frame, TABLE3_METRICS, num),
    )


def convergence(trials: pd.DataFrame) -> Table:
    """Table 7: (I) epochs to 95 % of the NC target, as % of the training length; (II) epochs
    to the reference (CE) trial's converged value, as % of the reference's own."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    by_key = t.set_index("key")
    data, shown = [], []
    parts: list[tuple[str, Callable[[pd.Series, str], tuple[float, float]]]] = [
        ("(I) to 95 % of the NC target", _to_95),
        ("(II) to the reference's converged value", lambda r, m: _to_ref(r, m, by_key)),
    ]
    for setting in ordered(chosen["setting"]):
        for part, measure in parts:
            for loss in ordered(chosen.loc[chosen.setting == setting, "loss"]):
                sel = chosen[(chosen.setting == setting) & (chosen.loss == loss)]
                row = {"setting": setting, "part": part, "loss": loss}
                show = dict(row)
                for m in TABLE7_METRICS:
                    got = [measure(r, m) for _, r in sel.iterrows()]
                    show[m] = _convergence_cell(got)
                    ok = [g for g in got if np.isfinite(g[0])]
                    row[f"{m} %"] = np.mean([g[0] for g in ok]) if ok else np.nan
                    row[f"{m} epochs"] = np.mean([g[1] for g in ok]) if ok else np.nan
                data.append(row)
                shown.append(show)
    refs = ", ".join(str(r) for r in ordered(column(t, "clock_reference_loss").dropna()))
    by_report = (column(t, "steps_to_ref_by") == "report").any()
    note = (
        " (II) is computed by the report from the NC histories for the finished trials the "
        "study did not log it on (it logs it when the whole study completes)."
        if by_report
        else ""
    )
    return Table(
        "convergence",
        "Convergence speed (Table 7)",
        "(I) the epoch from which the EWMA of the closeness to the NC target stays >= 95 %, as "
        "% of the trial's epochs; (II) the first epoch at which the trial's EWMA reaches the "
        "converged (final EWMA) value of its reference trial (the "
        f"{refs or DEFAULT_CLOCK_REFERENCE} trial with the same seed and grid point, "
        "evaluation.convergence.reference_loss), as % of the epoch at which the reference "
        "itself reaches it. Epochs in brackets; mean over finished seeds at each loss's "
        f"{SELECTION}; [k/n]: reached by k of n seeds. not reached: never within training. "
        f"{MISSING}: no reference or no data.{note}",
        drop_single_setting(pd.DataFrame(data)),
        drop_single_setting(pd.DataFrame(shown)),
    )


NOT_REACHED = (math.inf, math.inf)
NO_DATA = (math.nan, math.nan)


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
    return 100 * steps / row["epochs"], steps


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


def _convergence_cell(got: list[tuple[float, float]]) -> str:
    known = [g for g in got if not np.isnan(g[0])]
    ok = [g for g in known if np.isfinite(g[0])]
    if not known:
        return MISSING
    if not ok:
        return "not reached"
    text = f"{np.mean([g[0] for g in ok]):.1f} % ({np.mean([g[1] for g in ok]):g})"
    return text if len(ok) == len(known) else f"{text} [{len(ok)}/{len(known)}]"
