"""The downstream tables, numbered as in the source paper: linear transfer (Table 4), corruption
robustness on ImageNet-C (Table 5) and long-tailed classification (Table 6), each at every
loss's best configuration (chosen by validation accuracy), mean over finished seeds. Only tables
some trial logged are produced. Relative changes are against the study's reference loss
(`evaluation.transfer.reference_loss`, default `ce`), as the paper's are against CE.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ncstudy.config import CORRUPTIONS, TransferSpec
from ncstudy.evaluate.corruptions import ALEXNET_ERR
from ncstudy.report.longtail_facts import IMBALANCE, imbalance_caption, ratio_text, thresholds_text
from ncstudy.report.longtail_grid import longtail_grid
from ncstudy.report.tables import (
    MISSING,
    SELECTION,
    TEST,
    Table,
    best_configs,
    chosen_trials,
    column,
    ordered,
    pct,
    prepared,
)

DEFAULT_REFERENCE = TransferSpec.model_fields["reference_loss"].default
LT_GROUPS = (("all", "lt/acc1"), ("many", "lt/many_acc1"), ("medium", "lt/medium_acc1"))
LT_GROUPS += (("few", "lt/few_acc1"),)


def reference_loss(trials: pd.DataFrame) -> str:
    """The loss the relative changes compare against: the trials' `transfer_reference_loss`
    (from `evaluation.transfer.reference_loss`), else `ce`."""
    if "transfer_reference_loss" not in trials:
        return DEFAULT_REFERENCE
    named = [r for r in ordered(trials["transfer_reference_loss"]) if isinstance(r, str)]
    return named[0] if named else DEFAULT_REFERENCE


def _rows(trials: pd.DataFrame, metrics: list[tuple[str, str]]) -> pd.DataFrame:
    """Per (setting, loss) at the chosen configuration: the seed mean of each (label, metric)."""
    t = prepared(trials)
    chosen = chosen_trials(t, best_configs(t))
    rows = []
    for setting in ordered(t["setting"]):
        for loss in ordered(t["loss"]):
            sel = chosen[(chosen.setting == setting) & (chosen.loss == loss)]
            row = {"setting": setting, "loss": loss}
            row.update({label: column(sel, m).mean() for label, m in metrics})
            rows.append(row)
    return pd.DataFrame(rows, columns=["setting", "loss", *(label for label, _ in metrics)])


def _logged(trials: pd.DataFrame, pattern: str) -> list[str]:
    return sorted(c for c in trials.columns if re.fullmatch(pattern, c) and trials[c].notna().any())


def relative_change(data: pd.DataFrame, col: str, reference: str) -> pd.Series:
    """(value - reference loss's value) / reference's value, per setting (NaN without one)."""
    ref = data[data.loss == reference].set_index("setting")[col].astype(float)
    base = data["setting"].map(ref).astype(float)
    return (data[col].astype(float) - base) / base


# A training set counts as long-tailed when the study asked for a long-tailed profile
# (dataset.imbalance_ratio < 1), or when its logged class groups (lt/<group>_classes, from the
# training counts and evaluation.longtail's thresholds) split the classes: a balanced set whose
# split left a few images more in some classes puts every class in one group.
LT_CLASS_COUNTS = tuple(f"lt/{g}_classes" for g, _ in LT_GROUPS[1:])


def longtailed(trials: pd.DataFrame) -> pd.Series:
    """Per trial: whether its training set is long-tailed (see LT_CLASS_COUNTS)."""
    ratio = pd.to_numeric(column(trials, "imbalance_ratio"), errors="coerce")
    asked = ratio.notna() & (ratio < 1)
    groups = sum((column(trials, c).fillna(0) > 0).astype(int) for c in LT_CLASS_COUNTS)
    return asked | (groups >= 2)


def signed_pct(v: float) -> str:
    """A relative change as `+4.8%`, or the missing mark."""
    return MISSING if v is None or not np.isfinite(v) else f"{100 * v:+.1f}%"


def transfer_table(trials: pd.DataFrame, reference: str | None = None) -> Table | None:
    """Table 4: linear-transfer accuracy per downstream dataset, the mean, and the relative
    change of the mean against the reference loss."""
    keys = _logged(trials, r"transfer/([^/]+)/(acc1|map)")
    if not keys:
        return None
    reference = reference or reference_loss(trials)
    metrics = [(k.split("/")[1], k) for k in keys] + [("mean", "transfer/mean_acc1")]
    data = _rows(trials, metrics)
    data[f"vs {reference}"] = relative_change(data, "mean", reference)
    shown = data.astype(object)
    for label, _ in metrics:
        shown[label] = [pct(v) for v in data[label]]
    shown[f"vs {reference}"] = [signed_pct(v) for v in data[f"vs {reference}"]]
    return Table(
        "transfer",
        "Linear transfer (Table 4)",
        "Test accuracy (%) of a linear probe on the frozen encoder for each downstream dataset "
        "(VOC2007: multi-label classification, mAP, not detection), their mean and the relative "
        f"change of the mean against {reference} in the same setting; at each loss's "
        f"{SELECTION}. {MISSING}: not logged.",
        data,
        shown,
    )


def corruption_table(trials: pd.DataFrame) -> Table | None:
    """Table 5: clean error, mCE and the Corruption Error per corruption (AlexNet = 100) on
    ImageNet; elsewhere the unnormalised mean error and the error per corruption."""
    logged = {k.split("/")[1] for k in _logged(trials, r"corruption/([^/]+)/err")}
    if not logged:
        return None
    names = [c for c in CORRUPTIONS if c in logged]
    metrics = [(c, f"corruption/{c}/err") for c in names] + [("mean", "corruption/mean_err")]
    metrics += [("mCE", "corruption/mce"), ("clean", TEST)]
    raw = _rows(trials, metrics)
    has_data = raw[names].notna().any(axis=1)
    raw = raw[has_data].reset_index(drop=True)
    # mCE exists for the full 15 x 5 benchmark on ImageNet only (AlexNet's errors average it)
    normalised = not raw.empty and bool(raw["mCE"].notna().all())
    data = pd.DataFrame({"setting": raw["setting"], "loss": raw["loss"]})
    data["clean err %"] = 100 * (1 - raw["clean"])
    if normalised:
        data["mCE %"] = 100 * raw["mCE"]
        for c in names:
            data[c] = 100 * raw[c] / ALEXNET_ERR[c]
        what = (
            "mCE and each corruption's Corruption Error: the top-1 error (mean over the 5 "
            "severities) divided by AlexNet's on the same corruption (Hendrycks & Dietterich "
            "2019; AlexNet = 100), in %; mCE is their mean"
        )
    else:
        data["mean err %"] = 100 * raw["mean"]
        if raw["mCE"].notna().any():
            data["mCE %"] = 100 * raw["mCE"]
        for c in names:
            data[c] = 100 * raw[c]
        what = (
            "the top-1 error (%) under each corruption (mean over the severities studied) and "
            "their unnormalised mean (mCE, normalised by AlexNet's errors, exists only for the "
            "full 15 x 5 ImageNet-C benchmark)"
        )
    shown = data.astype(object)
    for c in data.columns[2:]:
        shown[c] = [MISSING if not np.isfinite(v) else f"{v:.1f}" for v in data[c]]
    return Table(
        "corruptions",
        "Corruption robustness (Table 5)",
        f"Clean top-1 test error (%), {what}; lower is better; at each loss's {SELECTION}. "
        f"{MISSING}: not logged.",
        data,
        shown,
    )


def longtail_table(trials: pd.DataFrame, reference: str | None = None) -> Table | None:
    """Table 6: long-tailed accuracy overall and on many / medium / few-shot classes, with the
    relative change of each loss against the reference loss."""
    trials = trials[longtailed(trials)]
    if not _logged(trials, r"lt/acc1"):
        return None  # no long-tailed training set (the worker logs lt/ for any uneven counts)
    reference = reference or reference_loss(trials)
    groups = [g for g, _ in LT_GROUPS]
    measured = [("imbalance", IMBALANCE)] if IMBALANCE in trials.columns else []
    acc = _rows(trials, [*LT_GROUPS, *measured])
    acc = acc[acc[groups].notna().any(axis=1)].reset_index(drop=True)
    change = acc.copy()
    for g in groups:
        change[g] = relative_change(acc, g, reference)
    rows, shown = [], []
    for setting in ordered(acc["setting"]):
        here = acc[acc.setting == setting]
        for _, r in here.iterrows():
            rows.append(r.to_dict())
            shown.append({"setting": setting, "loss": r["loss"], **{g: pct(r[g]) for g in groups}})
            shown[-1].update({label: ratio_text(r[label]) for label, _ in measured})
        if reference not in set(here["loss"]):
            continue
        for _, r in change[(change.setting == setting) & (change.loss != reference)].iterrows():
            label = f"{r['loss']} vs {reference}"
            rows.append({"setting": setting, "loss": label, **{g: r[g] for g in groups}})
            shown.append(
                {"setting": setting, "loss": label, **{g: signed_pct(r[g]) for g in groups}}
            )
            shown[-1].update({m: "" for m, _ in measured})
    columns = ["setting", "loss", *(label for label, _ in measured), *groups]
    return Table(
        "longtail",
        "Long-tailed classification (Table 6)",
        "Test accuracy (%) of trials on imbalanced training sets: all test samples, and the "
        "mean per-class accuracy of many-shot, medium-shot and few-shot classes (groups from "
        f"the training counts, {thresholds_text(trials)}); at each loss's {SELECTION}."
        f"{imbalance_caption(trials)} "
        f"Rows `<loss> vs {reference}`: the relative change against {reference} in the same "
        f"setting (in the CSV as a fraction). {MISSING}: not logged.",
        pd.DataFrame(rows, columns=columns),
        pd.DataFrame(shown, columns=columns),
    )


def downstream_tables(trials: pd.DataFrame) -> list[Table]:
    """The downstream tables some trial of the study logged, in the paper's order."""
    reference = reference_loss(trials)
    lt = trials[longtailed(trials)]
    tables = (
        transfer_table(trials, reference),
        corruption_table(trials),
        longtail_grid(lt, reference) if _logged(lt, r"lt/acc1") else None,  # the paper's layout
        longtail_table(trials, reference),
    )
    return [t for t in tables if t is not None]
