"""The downstream report tables (Tables 4, 5, 6) from a hand-made trials frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ncstudy.report.downstream_tables import (
    corruption_table,
    downstream_tables,
    longtail_table,
    transfer_table,
)
from ncstudy.report.tables import MISSING, all_tables


def trial(loss: str, seed: int, val: float, **metrics: float) -> dict:
    base = {
        "key": f"{loss}-{seed}", "run_id": f"r{loss}{seed}", "status": "FINISHED", "reason": None,
        "loss": loss, "temperature": np.nan, "batch_size": 64, "seed": seed,
        "dataset": "cifar10", "model": "resnet18", "axes": "", "setting": "cifar10",
        "epochs": 10, "num_classes": 10, "reference": "",
        "best/val_acc1": val, "final/test_acc1": val,
    }  # fmt: skip
    return base | metrics


@pytest.fixture
def trials() -> pd.DataFrame:
    rows = [
        trial("ce", 0, 0.8, **{"transfer/dtd/acc1": 0.5, "transfer/cifar10/acc1": 0.7}),
        trial("ce", 1, 0.8, **{"transfer/dtd/acc1": 0.7, "transfer/cifar10/acc1": 0.9}),
        trial("supcon", 0, 0.9, **{"transfer/dtd/acc1": 0.8, "transfer/cifar10/acc1": 0.9}),
    ]
    for r in rows:
        r["transfer/mean_acc1"] = (r["transfer/dtd/acc1"] + r["transfer/cifar10/acc1"]) / 2
        r.update({"lt/acc1": 0.6, "lt/many_acc1": 0.9, "lt/medium_acc1": 0.5, "lt/few_acc1": 0.1})
        r.update({"corruption/fog/err": 0.4, "corruption/snow/err": 0.2})
        r.update({"corruption/mean_err": 0.3, "corruption/mce": 0.35})
    return pd.DataFrame(rows)


def test_transfer_table_means_and_relative_change(trials: pd.DataFrame) -> None:
    t = transfer_table(trials)
    assert t is not None and list(t.data.columns) == [
        "setting", "loss", "cifar10", "dtd", "mean", "vs ce",
    ]  # fmt: skip
    ce = t.data[t.data.loss == "ce"].iloc[0]
    sc = t.data[t.data.loss == "supcon"].iloc[0]
    assert ce["dtd"] == pytest.approx(0.6) and ce["mean"] == pytest.approx(0.7)  # seed means
    assert ce["vs ce"] == pytest.approx(0.0)
    assert sc["vs ce"] == pytest.approx((0.85 - 0.7) / 0.7)
    assert t.display[t.display.loss == "supcon"]["vs ce"].iloc[0] == "+21.4%"


def test_longtail_and_corruption_tables(trials: pd.DataFrame) -> None:
    lt = longtail_table(trials)
    assert lt is not None and lt.data["few"].tolist() == pytest.approx([0.1, 0.1])
    cor = corruption_table(trials)
    assert cor is not None
    assert list(cor.data.columns) == ["setting", "loss", "fog", "snow", "mean", "mCE"]
    assert cor.display["fog"].iloc[0] == "40.00" and cor.display["mCE"].iloc[0] == "0.350"


def test_tables_only_when_logged(trials: pd.DataFrame) -> None:
    plain = trials[[c for c in trials.columns if "/" not in c or c.startswith(("best", "final"))]]
    assert downstream_tables(plain) == []
    names = [t.name for t in all_tables(trials)]
    assert names[-3:] == ["transfer", "longtail", "corruptions"]
    no_ce = transfer_table(trials[trials.loss != "ce"])
    assert no_ce is not None and no_ce.display["vs ce"].iloc[0] == MISSING
