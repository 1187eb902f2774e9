"""Jiang et al.'s fine-tuning experiment (Section 5; Kumar et al. 2022's CIFAR-10 -> STL-10):
per loss, the in-distribution test accuracy and the out-of-distribution accuracy of each
`evaluation.ood` set (`ood/<key>/acc1`), drawn from MLflow's trial rows alone, with the
paper's numbers beside the run's in the caption. Only for a study that logged an OOD metric."""

from __future__ import annotations

import re

import pandas as pd

from ncstudy.report.tables import MISSING, TEST, Table, column, finished, ordered, pct, prepared

# Jiang et al., Section 5: (ID, OOD) accuracy in %, CMF and the standard approach.
PAPER = {"cmf": (98.00, 90.67), "standard": (97.00, 87.42)}
OOD = re.compile(r"ood/([^/]+)/acc1")


def ood_keys(trials: pd.DataFrame) -> list[str]:
    """The OOD sets some trial logged an accuracy for."""
    return sorted(
        m[1] for c in trials.columns if (m := OOD.fullmatch(c)) and trials[c].notna().any()
    )


def finetune_rows(trials: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per (loss, tau): finished seeds, the mean ID test accuracy, OOD accuracy and images."""
    t = prepared(finished(trials))
    rows = []
    for (loss, tau), sel in t.groupby(["loss", "tau"], sort=False):
        row = {"loss": loss, "tau": tau, "seeds": len(sel), "ID": column(sel, TEST).mean()}
        for key in keys:
            row[f"OOD {key}"] = column(sel, f"ood/{key}/acc1").mean()
            row[f"{key} images"] = column(sel, f"ood/{key}/n_images").mean()
        rows.append(row)
    order = {loss: i for i, loss in enumerate(ordered(t["loss"]))}
    frame = pd.DataFrame(rows)
    return frame.sort_values("loss", key=lambda s: s.map(order), kind="stable").reset_index(
        drop=True
    )


def _run_text(row: dict, ood_col: str) -> str:
    """`cmf (tau 0.05) 91.20% ID / 85.00% OOD` for one row of the table."""
    tau = "" if row["tau"] == "none" else f" (tau {row['tau']})"
    return f"{row['loss']}{tau} {pct(row['ID'])}% ID / {pct(row[ood_col])}% OOD"


def finetune_table(trials: pd.DataFrame) -> Table | None:
    """The fine-tuning table (ID and OOD accuracy per loss); None without an OOD metric."""
    keys = ood_keys(trials)
    if not keys or finished(trials).empty:
        return None
    data = finetune_rows(trials, keys)
    shown = data.astype(object)
    for col in ["ID", *(f"OOD {k}" for k in keys)]:
        shown[col] = [pct(v) for v in data[col]]
    for key in keys:
        shown[f"{key} images"] = [
            MISSING if pd.isna(v) else f"{v:.0f}" for v in data[f"{key} images"]
        ]
    first = f"OOD {keys[0]}"
    run = "; ".join(_run_text(r, first) for r in data.to_dict("records"))
    caption = (
        "Fine-tuning a pretrained encoder on the training set (in distribution, ID: its test "
        "accuracy) and testing it unchanged on each OOD set (its images of the classes shared "
        "with the training set, scored by the trial's own classifier), in %, mean over finished "
        "seeds. Paper (Jiang et al. Section 5, Kumar et al.'s CIFAR-10 -> STL-10 with CLIP / "
        f"MoCo encoders): CMF {PAPER['cmf'][0]:.2f}% ID / {PAPER['cmf'][1]:.2f}% OOD against "
        f"{PAPER['standard'][0]:.2f}% / {PAPER['standard'][1]:.2f}% for the standard approach "
        f"(a randomly initialised learned classifier). This run ({keys[0]}): {run}."
    )
    return Table("finetune_ood", "Fine-tuning: ID and OOD accuracy (Jiang et al. Sec. 5)",
                 caption, data, shown)  # fmt: skip
