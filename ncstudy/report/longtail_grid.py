"""Table 6 as the source paper lays it out: losses (rows) x (dataset, imbalance ratio) columns,
the overall long-tailed test accuracy, and the relative change of every loss against the
reference loss (CE) in a row of its own. The per-group view (many / medium / few-shot) stays in
report.downstream_tables.longtail_table."""

from __future__ import annotations

import numpy as np
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

LT_NAMES = {
    "cifar10_lt": "CIFAR-10-LT",
    "cifar100_lt": "CIFAR-100-LT",
    "cifar10_jpeg_lt": "CIFAR-10-LT",
}


def _label(dataset: str, ratio: float) -> str:
    name = LT_NAMES.get(dataset, dataset)
    return name if not np.isfinite(ratio) else f"{name} r={ratio:g}"


def lt_columns(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(setting, label) per column: datasets in order of appearance, each from the mildest to
    the strongest imbalance (largest ratio first, as the paper); a label shared by several
    settings (another grid axis) carries the setting."""
    t = trials.assign(ratio=pd.to_numeric(column(trials, "imbalance_ratio"), errors="coerce"))
    rank = {d: i for i, d in enumerate(ordered(t["dataset"]))}
    firsts = t.groupby("setting", sort=False).first()
    keyed = sorted(
        firsts.index, key=lambda s: (rank[firsts.loc[s, "dataset"]], -firsts.loc[s, "ratio"])
    )
    labels = [_label(str(firsts.loc[s, "dataset"]), firsts.loc[s, "ratio"]) for s in keyed]
    return [
        (s, f"{lab} ({s})" if labels.count(lab) > 1 else lab)
        for s, lab in zip(keyed, labels, strict=True)
    ]


def longtail_grid(trials: pd.DataFrame, reference: str) -> Table:
    """Table 6: overall test accuracy per loss and (dataset, ratio), then `<loss> vs <ref>`
    rows with the relative change against the reference loss in the same column."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    cols = lt_columns(t)
    acc = {
        loss: {
            label: column(chosen[(chosen.loss == loss) & (chosen.setting == s)], "lt/acc1").mean()
            for s, label in cols
        }
        for loss in ordered(t["loss"])
    }
    rows = [{"loss": loss, **v} for loss, v in acc.items()]
    shown = [{"loss": loss, **{k: pct(x) for k, x in v.items()}} for loss, v in acc.items()]
    if reference in acc:
        base = acc[reference]
        for loss, v in acc.items():
            if loss == reference:
                continue
            change = {k: (x - base[k]) / base[k] for k, x in v.items()}
            rows.append({"loss": f"{loss} vs {reference}", **change})
            shown.append({"loss": f"{loss} vs {reference}", **_signed(change)})
    labels = ["loss", *(label for _, label in cols)]
    return Table(
        "longtail_grid",
        "Long-tailed classification by dataset and imbalance ratio (Table 6)",
        "Test top-1 accuracy (%) on the balanced test set after training on the long-tailed "
        "set, per dataset and imbalance ratio r = n_min / n_max (columns, mildest first), at "
        f"each loss's {SELECTION}, mean over finished seeds. Rows `<loss> vs {reference}`: "
        f"the relative change against {reference} in the same column (as the paper's last "
        f"row; a fraction in the CSV). {MISSING}: not logged.",
        pd.DataFrame(rows, columns=labels),
        pd.DataFrame(shown, columns=labels),
    )


def _signed(change: dict[str, float]) -> dict[str, str]:
    return {k: MISSING if not np.isfinite(v) else f"{100 * v:+.1f}%" for k, v in change.items()}
