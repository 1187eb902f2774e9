"""The end-of-study table of a study without a validation split shows accuracies it has."""

from __future__ import annotations

import re

from ncstudy.summary import TrialRow, format_summary


def test_without_validation_the_table_shows_train_and_test_accuracy() -> None:
    rows = [
        TrialRow("ce-b32-s0", "FINISHED", None, None, None, 0.6509, 0.8125, 0.7501),
        TrialRow("ce-b32-s1", "RUNNING", None, None, None, None, None, None),
    ]
    lines = format_summary(rows).splitlines()
    assert re.split(r"\s{2,}", lines[0])[2:4] == ["final train acc1 %", "final test acc1 %"]
    assert lines[2].split()[2:5] == ["81.25", "75.01", "0.6509"]
    assert lines[3].split()[2:5] == ["-", "-", "-"]


def test_with_validation_the_table_keeps_validation_columns() -> None:
    rows = [TrialRow("ce-b32-s0", "FINISHED", 0.5, 0.625, None, 0.7, 0.9, 0.8)]
    lines = format_summary(rows).splitlines()
    assert "final val acc1 %" in lines[0] and "test" not in lines[0]
    assert lines[2].split()[2:5] == ["50.00", "62.50", "0.7000"]
