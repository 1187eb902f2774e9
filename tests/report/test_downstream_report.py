"""The downstream report tables, numbered as in the source paper (Table 4 transfer, Table 5
ImageNet-C, Table 6 long tail), from hand-made trials frames: every cell follows from the inputs
by hand (seed means, relative changes, AlexNet-normalised Corruption Errors)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ncstudy.config import CORRUPTIONS
from ncstudy.evaluate.corruptions import ALEXNET_ERR
from ncstudy.report.build import all_tables
from ncstudy.report.downstream_tables import (
    corruption_table,
    downstream_tables,
    longtail_table,
    transfer_table,
)
from ncstudy.report.tables import MISSING

LT = {"ce": (0.60, 0.90, 0.50, 0.10), "supcon": (0.66, 0.90, 0.55, 0.20)}  # all/many/medium/few


def trial(loss: str, seed: int, val: float, **metrics: float) -> dict:
    base = {
        "key": f"{loss}-{seed}", "run_id": f"r{loss}{seed}", "status": "FINISHED", "reason": None,
        "loss": loss, "temperature": np.nan, "batch_size": 64, "seed": seed,
        "dataset": "cifar10", "model": "resnet18", "axes": "", "setting": "cifar10",
        "epochs": 10, "num_classes": 10, "reference": "", "imbalance_ratio": 0.01,
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
        groups = ("lt/acc1", "lt/many_acc1", "lt/medium_acc1", "lt/few_acc1")
        r.update(dict(zip(groups, LT[r["loss"]], strict=True)))
        r.update({"corruption/fog/err": 0.4, "corruption/snow/err": 0.2})
        r.update({"corruption/mean_err": 0.3})
    return pd.DataFrame(rows)


def test_transfer_table_means_and_relative_change(trials: pd.DataFrame) -> None:
    t = transfer_table(trials)
    assert t is not None and t.title == "Linear transfer (Table 4)"
    assert list(t.data.columns) == ["setting", "loss", "cifar10", "dtd", "mean", "vs ce"]
    ce = t.data[t.data.loss == "ce"].iloc[0]
    sc = t.data[t.data.loss == "supcon"].iloc[0]
    assert ce["dtd"] == pytest.approx(0.6) and ce["mean"] == pytest.approx(0.7)  # seed means
    assert ce["vs ce"] == pytest.approx(0.0)
    assert sc["vs ce"] == pytest.approx((0.85 - 0.7) / 0.7)
    assert t.display[t.display.loss == "supcon"]["vs ce"].iloc[0] == "+21.4%"


def test_the_reference_loss_of_the_study_is_honoured(trials: pd.DataFrame) -> None:
    # evaluation.transfer.reference_loss: supcon (the load step puts it on every trial)
    t = transfer_table(trials.assign(transfer_reference_loss="supcon"))
    assert t is not None and "vs supcon" in t.data and "vs ce" not in t.data
    ce = t.data.set_index("loss").loc["ce", "vs supcon"]
    assert ce == pytest.approx((0.7 - 0.85) / 0.85)
    lt = longtail_table(trials.assign(transfer_reference_loss="supcon"))
    assert lt is not None and list(lt.data["loss"]) == ["ce", "supcon", "ce vs supcon"]


def test_longtail_table_has_the_relative_change_row(trials: pd.DataFrame) -> None:
    lt = longtail_table(trials)
    assert lt is not None and lt.title == "Long-tailed classification (Table 6)"
    data = lt.data.set_index("loss")
    assert list(data.index) == ["ce", "supcon", "supcon vs ce"]
    for i, group in enumerate(("all", "many", "medium", "few")):
        ce, sc = LT["ce"][i], LT["supcon"][i]
        assert data.loc["ce", group] == pytest.approx(ce)  # both seeds equal: their mean
        assert data.loc["supcon vs ce", group] == pytest.approx((sc - ce) / ce)
    shown = lt.display.set_index("loss")
    assert shown.loc["supcon", "few"] == "20.00" and shown.loc["supcon vs ce", "few"] == "+100.0%"
    assert shown.loc["supcon vs ce", "many"] == "+0.0%"


def test_corruption_table_unnormalised_off_imagenet(trials: pd.DataFrame) -> None:
    cor = corruption_table(trials)
    assert cor is not None and cor.title == "Corruption robustness (Table 5)"
    # the benchmark's corruption order (snow before fog), no mCE without AlexNet's reference
    assert list(cor.data.columns) == ["setting", "loss", "clean err %", "mean err %", "snow", "fog"]
    ce = cor.data.set_index("loss").loc["ce"]
    assert ce["clean err %"] == pytest.approx(20.0)  # 1 - final/test_acc1 (0.8)
    assert ce["fog"] == pytest.approx(40.0) and ce["mean err %"] == pytest.approx(30.0)
    assert cor.display.set_index("loss").loc["supcon", "clean err %"] == "10.0"


def test_corruption_table_on_imagenet_is_normalised_by_alexnet() -> None:
    """ImageNet-C layout: clean error, mCE in %, and each corruption's Corruption Error (the
    error divided by AlexNet's, AlexNet = 100); mCE is their mean."""
    errors = {c: 0.30 + 0.02 * i for i, c in enumerate(CORRUPTIONS)}
    mce = float(np.mean([errors[c] / ALEXNET_ERR[c] for c in CORRUPTIONS]))  # by hand
    metrics = {f"corruption/{c}/err": e for c, e in errors.items()}
    metrics |= {"corruption/mean_err": float(np.mean(list(errors.values())))}
    metrics |= {"corruption/mce": mce}
    frame = pd.DataFrame([trial("ce", 0, 0.75, **metrics)]).assign(setting="imagenet")
    cor = corruption_table(frame)
    assert cor is not None
    assert list(cor.data.columns) == ["setting", "loss", "clean err %", "mCE %", *CORRUPTIONS]
    row = cor.data.iloc[0]
    assert row["clean err %"] == pytest.approx(25.0) and row["mCE %"] == pytest.approx(100 * mce)
    assert row["fog"] == pytest.approx(100 * errors["fog"] / ALEXNET_ERR["fog"])
    assert np.mean([row[c] for c in CORRUPTIONS]) == pytest.approx(row["mCE %"])
    assert cor.display.iloc[0]["mCE %"] == f"{100 * mce:.1f}"


def test_tables_only_when_logged_in_the_papers_order(trials: pd.DataFrame) -> None:
    plain = trials[[c for c in trials.columns if "/" not in c or c.startswith(("best", "final"))]]
    assert downstream_tables(plain) == []
    names = [t.name for t in all_tables(trials)]
    assert names[-4:] == ["transfer", "corruptions", "longtail_grid", "longtail"]  # Tables 4-6
    no_ce = transfer_table(trials[trials.loss != "ce"])
    assert no_ce is not None and no_ce.display["vs ce"].iloc[0] == MISSING
    no_ref = longtail_table(trials[trials.loss != "ce"])
    assert no_ref is not None and list(no_ref.data["loss"]) == ["supcon"]  # nothing to compare
