"""The NC tables of the report: metrics at the end of training (the source paper's Table 3) and
per trial. The convergence clock's table (Table 7) is in ncstudy.report.table7."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ncstudy.metrics import metric_target
from ncstudy.metrics.compute import WEIGHT_METRICS
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
