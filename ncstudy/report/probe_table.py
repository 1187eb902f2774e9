"""Table 14 of the source paper: the standard linear probe (re-augmented every epoch through the
frozen encoder, `evaluation.probes.augment: both`) beside the cached probe (un-augmented
features) and SCL's fixed prototypes, at each SCL loss's best configuration."""

from __future__ import annotations

import pandas as pd

from ncstudy.report.tables import (
    MISSING,
    SELECTION,
    Table,
    best_configs,
    chosen_trials,
    column,
    ordered,
    pct,
    prepared,
)

COLUMNS = (
    ("Standard LP", "final/test_lp_aug_acc1"),
    ("Cached LP", "final/test_lp_acc1"),
    ("FP", "final/test_fp_acc1"),
)


def probe_protocols(trials: pd.DataFrame) -> Table | None:
    """Table 14, or None when no trial trained the re-augmented probe."""
    t = prepared(trials)
    scl = [
        loss
        for loss in ordered(t["loss"])
        if column(t[t.loss == loss], COLUMNS[0][1]).notna().any()
    ]
    if not scl:
        return None
    chosen = chosen_trials(t, best_configs(t[t.loss.isin(scl)]))
    data, shown = [], []
    for setting in ordered(t["setting"]):
        for loss in scl:
            sel = chosen[(chosen.setting == setting) & (chosen.loss == loss)]
            row = {"setting": setting, "loss": loss}
            row |= {label: 100 * column(sel, m).mean() for label, m in COLUMNS}
            data.append(row)
            shown.append({**row, **{label: pct(row[label] / 100) for label, _ in COLUMNS}})
    return Table(
        "probe_protocols",
        "Standard vs cached linear probing (Table 14)",
        "Test top-1 accuracy (%, mean over finished seeds) of the SCL encoder with the standard "
        "linear probe (re-augmented views through the frozen encoder every epoch), the cached "
        "probe (un-augmented features computed once, ncstudy's default) and the fixed "
        f"class-mean prototypes (FP); same probe recipe; at each loss's {SELECTION}. "
        f"{MISSING}: not logged.",
        pd.DataFrame(data),
        pd.DataFrame(shown),
    )
