"""The NC tables of the report: metrics at the end of training (the source paper's Table 3) and
per trial. The convergence clock's table (Table 7) is in ncstudy.report.table7."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ncstudy.metrics import metric_target
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

TABLE3_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "mir",
    "hdr",
    "nc1",
    "nc2_etf_dist_means",
    "nc2_etf_dist_weights",
    "nc3",
    "nc4",
)


def nc_final(trials: pd.DataFrame) -> Table:
    """Table 3: NC metrics at the end of training per loss (best configuration, mean over
    seeds), after a `perfect NC` row per setting."""
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
    frame = pd.DataFrame(data, columns=["setting", "loss", *TABLE3_METRICS])
    return Table(
        "nc_final",
        "Neural collapse at the end of training (Table 3)",
        f"NC metrics on the training set after the last epoch, at each loss's {SELECTION}, "
        "mean over finished seeds. The paper's columns: Intra/Inter/Weights effective rank = "
        "erank_intra/erank_inter/erank_weights, alignment Weight = align_weight_mean, Instance "
        "= align_weight_inst, MIR, HDR; definitions in metrics.md (docs/metrics.md). "
        f"{MISSING}: no finished trial (or no target, in the perfect-NC row).",
        drop_single_setting(frame),
        drop_single_setting(formatted(frame, TABLE3_METRICS, num)),
    )


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
