"""Table 14: the standard (re-augmented) probe beside the cached one and FP, only when logged."""

from __future__ import annotations

import pandas as pd
import pytest

from ncstudy.report.build import all_tables
from ncstudy.report.probe_table import probe_protocols


def trial(key: str, loss: str, tau: float, val: float, extra: dict) -> dict:
    return {
        "key": key,
        "status": "FINISHED",
        "setting": "cifar100",
        "loss": loss,
        "temperature": tau,
        "batch_size": 512,
        "seed": 0,
        "num_classes": 100,
        "best/val_acc1": val,
        "final/test_acc1": 0.7,
        **extra,
    }


def test_table14_at_the_best_configuration_and_absent_without_the_standard_probe() -> None:
    probes = {"final/test_lp_aug_acc1": 0.739, "final/test_lp_acc1": 0.723}
    frame = pd.DataFrame(
        [
            trial("a", "supcon", 0.1, 0.70, {**probes, "final/test_fp_acc1": 0.739}),
            trial("b", "supcon", 0.5, 0.60, {"final/test_lp_aug_acc1": 0.9}),  # worse val
            trial("c", "ce", float("nan"), 0.7, {}),
        ]
    )
    table = probe_protocols(frame)
    assert table is not None
    row = table.data.set_index("loss").loc["supcon"]
    assert row["Standard LP"] == pytest.approx(73.9) and row["Cached LP"] == pytest.approx(72.3)
    assert row["FP"] == pytest.approx(73.9)
    assert list(table.display.columns) == ["setting", "loss", "Standard LP", "Cached LP", "FP"]
    assert "probe_protocols" in [t.name for t in all_tables(frame)]
    assert probe_protocols(frame.drop(columns="final/test_lp_aug_acc1")) is None
