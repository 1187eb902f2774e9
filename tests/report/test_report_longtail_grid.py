"""Table 6 in the paper's layout: losses x (dataset, imbalance ratio), mildest ratio first, and
`<loss> vs ce` rows with the relative change (the paper's +1.2% ... +7.0% row)."""

from __future__ import annotations

import pandas as pd
import pytest

from ncstudy.report.downstream_tables import downstream_tables

# the paper's Table 6: CE and NONL on CIFAR-10-LT and CIFAR-100-LT at r = 0.1, 0.02, 0.01
PAPER = {
    ("cifar10_lt", 0.1): (88.1, 89.2),
    ("cifar10_lt", 0.02): (76.8, 80.5),
    ("cifar10_lt", 0.01): (70.2, 76.3),
    ("cifar100_lt", 0.1): (55.5, 57.4),
    ("cifar100_lt", 0.02): (41.5, 44.7),
    ("cifar100_lt", 0.01): (37.4, 40.0),
}


def frame() -> pd.DataFrame:
    rows = []
    # the strongest imbalance first in the input: the table orders mildest first
    for (dataset, ratio), accs in sorted(PAPER.items(), key=lambda kv: kv[0][1]):
        for loss, acc in zip(("ce", "nonl"), accs, strict=True):
            rows.append(
                {
                    "key": f"{loss}-{dataset}-{ratio}",
                    "status": "FINISHED",
                    "setting": f"{dataset} imbalance_ratio={ratio}",
                    "dataset": dataset,
                    "imbalance_ratio": ratio,
                    "loss": loss,
                    "temperature": None if loss == "ce" else 0.1,
                    "batch_size": 512,
                    "seed": 0,
                    "final/test_acc1": acc / 100,
                    "lt/acc1": acc / 100,
                }
            )
    return pd.DataFrame(rows)


def test_longtail_grid_matches_the_papers_layout_and_relative_row() -> None:
    tables = {t.name: t for t in downstream_tables(frame())}
    grid = tables["longtail_grid"]
    assert "longtail" in tables  # the per-group view stays
    cols = list(grid.display.columns)
    assert cols == ["loss"] + [
        f"{name} r={r}" for name in ("CIFAR-10-LT", "CIFAR-100-LT") for r in (0.1, 0.02, 0.01)
    ]
    data, shown = grid.data.set_index("loss"), grid.display.set_index("loss")
    assert data.loc["ce", "CIFAR-10-LT r=0.02"] == pytest.approx(76.8 / 100)
    # the paper's relative row, to its rounding: +1.2% +4.8% +8.7% +3.4% +7.7% +7.0%
    assert list(shown.loc["nonl vs ce"]) == ["+1.2%", "+4.8%", "+8.7%", "+3.4%", "+7.7%", "+7.0%"]
