"""The long-tail table states what its trials logged about their data: the training imbalance
each measured (`data/imbalance_ratio`, a column, mean over seeds) and the group thresholds
their lt/* metrics used (from the params, in the caption); without them it says where the
thresholds are set, as before."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ncstudy.report.downstream_tables import longtail_table
from ncstudy.report.tables import MISSING

LT = {"ce": (0.60, 0.90, 0.50, 0.10), "supcon": (0.66, 0.90, 0.55, 0.20)}  # all/many/medium/few


def trial(loss: str, seed: int, **extra: float) -> dict:
    row = {
        "key": f"{loss}-{seed}", "run_id": f"r{loss}{seed}", "status": "FINISHED", "reason": None,
        "loss": loss, "temperature": np.nan, "batch_size": 64, "seed": seed,
        "dataset": "cifar10", "model": "resnet18", "axes": "", "setting": "cifar10",
        "epochs": 10, "num_classes": 10, "reference": "", "imbalance_ratio": 0.01,
        "best/val_acc1": 0.8, "final/test_acc1": 0.8,
    }  # fmt: skip
    groups = ("lt/acc1", "lt/many_acc1", "lt/medium_acc1", "lt/few_acc1")
    return row | dict(zip(groups, LT[loss], strict=True)) | extra


def test_measured_imbalance_and_logged_thresholds_are_shown() -> None:
    logged = {"lt_many_threshold": 100.0, "lt_few_threshold": 20.0}
    frame = pd.DataFrame(
        [
            trial("ce", 0, **{"data/imbalance_ratio": 100.0}, **logged),
            trial("ce", 1, **{"data/imbalance_ratio": 90.0}, **logged),
            trial("supcon", 0, **logged),  # an older run: no measured ratio
        ]
    )
    lt = longtail_table(frame)
    assert lt is not None
    assert list(lt.data.columns) == ["setting", "loss", "imbalance", "all", "many", "medium", "few"]
    data = lt.data.set_index("loss")
    assert data.loc["ce", "imbalance"] == 95.0  # the mean of the two seeds' measurements
    shown = lt.display.set_index("loss")
    assert shown.loc["ce", "imbalance"] == "95.0x"
    assert shown.loc["supcon", "imbalance"] == MISSING
    assert shown.loc["supcon vs ce", "imbalance"] == ""
    assert "many-shot > 100 training images, few-shot < 20" in lt.caption
    assert "data/imbalance_ratio" in lt.caption


def test_without_them_the_table_is_as_before() -> None:
    lt = longtail_table(pd.DataFrame([trial("ce", 0), trial("supcon", 0)]))
    assert lt is not None and "imbalance" not in lt.data.columns
    assert "thresholds in evaluation.longtail" in lt.caption
    assert "data/imbalance_ratio" not in lt.caption
