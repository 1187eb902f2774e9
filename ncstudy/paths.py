"""Where a study writes, and the error of a study that cannot start.

A leaf module (standard library only): the driver, the resume checks, the search and the CLI
share these without importing one another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ncstudy.config import StudySpec

MARKER = "study.yaml"  # a study's folder holds it once the study has started
STORAGE_PATH_ENV = "NCSTUDY_STORAGE_PATH"


class StudyError(RuntimeError):
    """A study that cannot start (already exists, nothing to resume, edited since its runs,
    does not fit the cluster, bad output folder); the CLI exits with code 2."""


def default_tracking_uri(output_dir: Path) -> str:
    """MLFLOW_TRACKING_URI if set (a server on a cluster), else a SQLite store in output_dir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{output_dir.resolve()}/mlflow.db"


@dataclass(frozen=True)
class StudyPaths:
    """The study's output and own folders, its MLflow store and where Ray keeps its results."""

    output_dir: Path
    study_dir: Path
    tracking_uri: str
    storage: str

    @classmethod
    def of(cls, study: StudySpec, storage_path: str | None = None) -> StudyPaths:
        output_dir = Path(study.output_dir).expanduser().resolve()
        storage = storage_path or os.environ.get(STORAGE_PATH_ENV)
        return cls(
            output_dir=output_dir,
            study_dir=study.study_dir,
            tracking_uri=default_tracking_uri(output_dir),
            storage=(storage.rstrip("/") + "/" + study.name) if storage else str(study.study_dir),
        )

    def tune_path(self, loss_name: str | None = None) -> str:
        """Ray Tune's experiment folder: `tune` for the grid, `tune-<loss>` for a loss's search."""
        return f"{self.storage}/tune" + ("" if loss_name is None else f"-{loss_name}")

    @property
    def train_storage(self) -> str:
        """Where Ray Train keeps the runs (and checkpoints) of multi-worker trials."""
        return self.storage + "/train"
