"""Two trials of one experiment that log the same dataset at the same moment: MLflow's SQL
store looks the dataset up and then inserts it, so the second insert violates the unique
constraint. The race is reproduced exactly: the other trial's log_inputs runs between this
trial's lookup and its insert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.store.tracking.dbmodels.models import SqlDataset
from sqlalchemy.orm import Query

from ncstudy import tracking
from ncstudy.runlog import dataset_inputs, log_inputs

DATASET = {"name": "digits", "root": None, "val_fraction": 0.1}
SIZES = {"train": 300, "test": 100}


def _race(monkeypatch: pytest.MonkeyPatch, client: Any, other_run: str) -> list[int]:
    """Patch Query.all: after the first dataset lookup, the other run logs the same inputs."""
    original = Query.all
    lookups: list[int] = []

    def all_then_other(query: Query) -> list[Any]:
        rows = original(query)
        described = [d.get("entity") for d in query.column_descriptions]
        if SqlDataset in described and not lookups:
            lookups.append(len(rows))
            client.log_inputs(other_run, datasets=dataset_inputs(DATASET, SIZES))
        return rows

    monkeypatch.setattr(Query, "all", all_then_other)
    return lookups


def _runs(tmp_path: Path) -> tuple[Any, str, str]:
    client = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("race")
    first = client.create_run(experiment).info.run_id
    second = client.create_run(experiment).info.run_id
    return client, first, second


def test_mlflow_alone_fails_the_losing_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ncstudy's retry the race is the error seen in a study (why the retry exists)."""
    client, first, second = _runs(tmp_path)
    lookups = _race(monkeypatch, client, second)
    with pytest.raises(Exception, match="(?i)unique constraint"):
        client.log_inputs(first, datasets=dataset_inputs(DATASET, SIZES))
    assert lookups == [0]


def test_log_inputs_links_the_dataset_the_other_trial_inserted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, first, second = _runs(tmp_path)
    lookups = _race(monkeypatch, client, second)
    log_inputs(client, first, dataset_inputs(DATASET, SIZES))
    monkeypatch.undo()
    assert lookups == [0]
    for run_id in (first, second):
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert sorted(i.dataset.profile for i in inputs) == sorted(
            d.dataset.profile for d in dataset_inputs(DATASET, SIZES)
        )
    # one row per split in the experiment, shared by both runs
    digests = {
        i.dataset.digest for r in (first, second) for i in client.get_run(r).inputs.dataset_inputs
    }
    assert len(digests) == 2


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    class Broken:
        def log_inputs(self, run_id: str, datasets: list[Any]) -> None:
            calls.append(1)
            raise RuntimeError("database is on fire")

    with pytest.raises(RuntimeError, match="on fire"):
        log_inputs(Broken(), "r", [])
    assert calls == [1]
