"""Table 3 as the paper lays it out: MIR/HDR are the paper's variants (`mir_paper`,
`hdr_paper`), and an SCL loss gets a `+ LP` row with its linear probe's metrics (`nc/lp/*`)."""

from __future__ import annotations

import math

import pandas as pd

from ncstudy.report.nc_tables import TABLE3_METRICS, nc_final


def trial(key: str, loss: str, nc: dict[str, float]) -> dict:
    """One finished trial row as the report's loader gives it (10 classes, one temperature)."""
    return {
        "key": key,
        "status": "FINISHED",
        "setting": "cifar10",
        "loss": loss,
        "temperature": 0.1,
        "batch_size": 512,
        "seed": 0,
        "num_classes": 10,
        "best/val_acc1": 0.9,
        "final/test_acc1": 0.9,
        **nc,
    }


def test_table3_shows_paper_mir_hdr_in_the_paper_columns_and_the_scl_lp_row() -> None:
    ce = {"nc/mir": 0.5, "nc/hdr": 0.1, "nc/mir_paper": 0.98, "nc/hdr_paper": 0.03}
    scl = {"nc/mir_paper": 1.0, "nc/hdr_paper": 0.09, "nc/erank_intra": 4.5, "nc/nc3": 0.0}
    scl |= {"nc/lp/mir_paper": 0.99, "nc/lp/hdr_paper": 0.07, "nc/lp/nc3": 0.8}
    scl |= {"nc/lp/nc4": 0.02, "nc/lp/erank_weights": 8.3}
    frame = pd.DataFrame([trial("a", "ce", ce), trial("b", "supcon", scl)])
    table = nc_final(frame)
    data = table.data.set_index("loss")
    # the paper's column order: ..., Instance, MIR, HDR, then the rest; centred mir/hdr last
    cols = list(TABLE3_METRICS)
    assert cols.index("mir_paper") == cols.index("align_weight_inst") + 1
    assert cols[-2:] == ["mir", "hdr"]
    assert data.loc["ce", "mir_paper"] == 0.98 and data.loc["ce", "mir"] == 0.5
    assert "mir_paper/hdr_paper" in table.caption
    # the SCL loss's own row (fixed prototypes) and its probe row
    assert list(data.index) == ["perfect NC", "ce", "supcon", "supcon + LP"]
    lp = data.loc["supcon + LP"]
    assert (lp["mir_paper"], lp["hdr_paper"], lp["nc3"]) == (0.99, 0.07, 0.8)
    assert (lp["nc4"], lp["erank_weights"]) == (0.02, 8.3)
    assert math.isnan(lp["erank_intra"])  # feature-only: not logged for the probe's features
    assert data.loc["supcon", "erank_intra"] == 4.5 and data.loc["supcon", "nc3"] == 0.0
    assert "ce + LP" not in data.index  # no probe metrics, no probe row
    assert table.display.set_index("loss").loc["supcon + LP", "erank_intra"] == "—"
