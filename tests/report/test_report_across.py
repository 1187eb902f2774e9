"""Table 1 across datasets: each dataset at the paper's fixed batch size (CIFAR 512,
ImageNet-100 1024, ImageNet-1K the best of 2048 / 4096 / 8192), in the paper's column order,
the temperature chosen by validation accuracy, never by test accuracy."""

from __future__ import annotations

import pandas as pd
import pytest

from ncstudy.report.across import across_datasets, across_tables


def trial(study, dataset, loss, tau, batch, val, test, status="FINISHED") -> dict:
    return {
        "study": study,
        "key": f"{study}/{loss}-{tau}-{batch}",
        "status": status,
        "setting": dataset,
        "dataset": dataset,
        "loss": loss,
        "temperature": tau,
        "batch_size": batch,
        "seed": 0,
        "best/val_acc1": val,
        "final/test_acc1": test,
    }


def frame() -> pd.DataFrame:
    nan = float("nan")
    return pd.DataFrame(
        [
            # ImageNet-1K first in the input: the table still puts it last
            trial("in1k", "imagenet", "ntce", 0.2, 2048, 0.70, 0.760),
            trial("in1k", "imagenet", "ntce", 0.2, 4096, 0.72, 0.767),  # best val of the 3
            trial("in1k", "imagenet", "ntce", 0.2, 8192, 0.71, 0.780),  # best test: not chosen
            trial("cifar", "cifar100", "ntce", 0.1, 512, 0.60, 0.70),
            trial("cifar", "cifar100", "ntce", 0.2, 512, 0.65, 0.729),  # best val at 512
            trial("cifar", "cifar100", "ntce", 0.2, 1024, 0.90, 0.90),  # not the paper's batch
            trial("cifar", "cifar100", "ce", nan, 512, 0.6, 0.72),
            trial("cifar", "cifar10", "ce", nan, 512, 0.9, 0.95),
            trial("in100", "imagenet100", "ce", nan, 1024, 0.8, 0.84),
            trial("in100", "imagenet100", "ntce", 0.2, 256, 0.8, 0.85),  # no b = 1024 trial
        ]
    )


def test_each_dataset_at_the_papers_batch_size_and_order() -> None:
    table = across_datasets(frame())
    data, shown = table.data.set_index("loss"), table.display.set_index("loss")
    assert list(shown.columns) == ["CIFAR-10", "CIFAR-100", "ImageNet-100", "ImageNet-1K"]
    assert data.loc["ntce", "CIFAR-100"] == pytest.approx(72.9)  # b=512, tau 0.2 by validation
    assert shown.loc["ntce", "CIFAR-100"] == "72.90 (τ=0.2, b=512)"
    assert data.loc["ntce", "ImageNet-1K"] == pytest.approx(
        76.7
    )  # b=4096 by validation, not 8192's test
    assert data.loc["ntce", "ImageNet-1K batch size"] == 4096
    assert shown.loc["ntce", "ImageNet-100"] == "—"  # only b=256 trials
    assert shown.loc["ce", "ImageNet-100"] == "84.00 (b=1024)"
    assert shown.loc["ntce", "CIFAR-10"] == "—"  # never run
    assert "ImageNet-1K: b = 2048 / 4096 / 8192" in table.caption


def test_unfinished_trials_do_not_count_and_every_trial_is_listed() -> None:
    trials = frame()
    trials.loc[trials.batch_size == 4096, "status"] = "FAILED"
    tables = {t.name: t for t in across_tables(trials)}
    data = tables["best_across_datasets"].data.set_index("loss")
    assert data.loc["ntce", "ImageNet-1K batch size"] == 8192  # next best validation
    assert len(tables["trials"].data) == len(trials)


def test_no_validation_to_choose_says_so_in_its_cell_only() -> None:
    nan = float("nan")
    trials = pd.concat(
        [
            frame(),
            pd.DataFrame(
                [  # a second CIFAR-10 study: two temperatures at 512 and no validation split
                    trial("cifar10b", "cifar10", "ntce", 0.1, 512, nan, 0.94),
                    trial("cifar10b", "cifar10", "ntce", 0.2, 512, nan, 0.95),
                ]
            ),
        ],
        ignore_index=True,
    )
    shown = across_datasets(trials).display.set_index("loss")
    assert shown.loc["ntce", "CIFAR-10 (cifar10b)"] == "no val"
    assert shown.loc["ce", "CIFAR-10 (cifar)"] == "95.00 (b=512)"  # the other study's column
    assert shown.loc["ntce", "CIFAR-100"] == "72.90 (τ=0.2, b=512)"
