"""`steps_to_ref` for a partial study: a study logs it on its trials only when it completes
(ncstudy.convergence_ref.log_steps_to_ref); the report computes the same values, with the same
reference rule and clock, from the NC histories of the finished trials that lack it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

from ncstudy.convergence_ref import NC_PREFIX, choose_reference, clock_prefix, reached_steps
from ncstudy.metrics.convergence import CLOCK_PREFIX

STEPS_TO_REF = "steps_to_ref/"


def fill_steps_to_ref(trials: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    """`trials` with `reference`, `steps_to_ref/<metric>` and `steps_to_ref_by = "report"` on
    every finished trial that the study did not give a reference (and that has one: a finished
    trial of its `clock_reference_loss` with the same seed). Metrics never reached stay NaN, as
    the study leaves them unlogged."""
    out = trials.copy()
    if out.empty or histories.empty:
        return out
    done = out[out["status"] == "FINISHED"]
    todo = done[done["reference"].isna()]
    if todo.empty:
        return out
    nc = histories[histories["metric"].str.startswith((NC_PREFIX, CLOCK_PREFIX))]
    series = {
        (key, metric): (group["step"].astype(int).tolist(), group["value"].tolist())
        for (key, metric), group in nc.sort_values("step").groupby(["key", "metric"])
    }
    for col in ("reference", "steps_to_ref_by"):
        out[col] = out[col].astype(object)
    finished = [(r["loss"], _trial(r)) for _, r in done.iterrows()]  # in grid order
    for index, row in todo.iterrows():
        candidates = [t for loss, t in finished if loss == row["clock_reference_loss"]]
        ref = choose_reference(_trial(row), candidates)
        if ref is None or not np.isfinite(row["num_classes"]):
            continue  # no reference yet, or K unknown (no readable study.yaml): no target
        prefix = clock_prefix(m for k, m in series if k == ref.key)
        names = sorted(m[len(prefix) :] for k, m in series if k == ref.key and m.startswith(prefix))
        for name, _, reached in reached_steps(
            names,
            int(row["num_classes"]),
            lambda n, key=row["key"], p=prefix: series.get((key, p + n), ([], [])),
            lambda n, key=ref.key, p=prefix: series[key, p + n],
            float(row["clock_ewma_alpha"]),
        ):
            column = STEPS_TO_REF + name
            if column not in out:
                out[column] = math.nan
            out.at[index, column] = math.nan if reached is None else float(reached)
        out.at[index, "reference"] = ref.key
        out.at[index, "steps_to_ref_by"] = "report"
    return out


def _trial(row: pd.Series) -> SimpleNamespace:
    """What choose_reference reads of a trial: key, seed, batch size and extra axes."""
    return SimpleNamespace(
        key=row["key"], seed=row["seed"], batch_size=row["batch_size"], axes=row["axes"]
    )
