"""Where a study and its trials record: frozen values the driver hands to trials and workers.

A leaf module (standard library only), so that the driver, the trial function, the worker loops
and the report can share these types without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyTarget:
    """The study's MLflow experiment and parent run, and where Ray Train keeps its runs."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    train_storage: str


@dataclass(frozen=True)
class RunTarget:
    """One trial's MLflow run (the child run a worker loop logs to)."""

    tracking_uri: str
    run_id: str
