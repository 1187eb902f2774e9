"""The fine-tuning table of paper 002 (Section 5, CIFAR-10 -> STL-10) on a constructed trials
frame: per loss the seed means of the ID test accuracy and the OOD accuracy, the paper's
numbers beside the run's in the caption; no table without an OOD metric; a failed trial is
left out. Drawn from MLflow end to end: tests/evaluate/test_finetune_stl10_study.py."""

from __future__ import annotations

import pandas as pd

from ncstudy.report.paper002_finetune import finetune_table


def trials() -> pd.DataFrame:
    rows = []
    for loss, tau, test, ood in [("ce", None, 0.90, 0.70), ("cmf", 0.05, 0.92, 0.80)]:
        for seed, shift in enumerate((0.0, 0.02)):
            rows.append(
                {"key": f"{loss}{seed}", "status": "FINISHED", "loss": loss, "temperature": tau,
                 "final/test_acc1": test + shift, "ood/stl10/acc1": ood - shift,
                 "ood/stl10/n_images": 405.0}
            )  # fmt: skip
    rows.append({"key": "cmf9", "status": "FAILED", "loss": "cmf", "temperature": 0.05,
                 "final/test_acc1": 0.1, "ood/stl10/acc1": 0.1})  # fmt: skip
    return pd.DataFrame(rows)


def test_table_holds_id_and_ood_means_per_loss() -> None:
    table = finetune_table(trials())
    assert table is not None
    data = table.data.set_index("loss")
    assert list(data.index) == ["ce", "cmf"] and list(data["seeds"]) == [2, 2]
    assert data.loc["cmf", "ID"] == 0.93 and abs(data.loc["cmf", "OOD stl10"] - 0.79) < 1e-12
    assert list(table.display["stl10 images"]) == ["405", "405"]
    assert "CMF 98.00% ID / 90.67% OOD against 97.00% / 87.42%" in table.caption
    assert "This run (stl10): ce 91.00% ID / 69.00% OOD; cmf (tau 0.05) 93.00% ID / 79.00% OOD" in (
        table.caption
    )


def test_no_table_without_an_ood_metric() -> None:
    plain = trials().drop(columns=["ood/stl10/acc1", "ood/stl10/n_images"])
    assert finetune_table(plain) is None
