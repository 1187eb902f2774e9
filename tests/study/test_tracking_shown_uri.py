"""No credential of the MLflow tracking URI reaches the console, an error or a report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ncstudy.paths import StudyPaths
from ncstudy.summary import mlflow_ui_command
from ncstudy.tracking import shown_uri

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("sqlite:////tmp/a b/mlflow.db", "sqlite:////tmp/a b/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://nc:s3cret@db:5432/mlflow", "postgresql://nc:***@db:5432/mlflow"),
        ("postgresql://nc:a:b@c@db/mlflow", "postgresql://nc:***@db/mlflow"),
        ("mysql+pymysql://root@db/mlflow", "mysql+pymysql://root@db/mlflow"),
        ("https://u:p%40ss@host/x?token=abc&x=1", "https://u:***@host/x?token=***&x=1"),
        ("https://host/x?api_key=k&sig=s", "https://host/x?api_key=***&sig=***"),
    ],
)
def test_passwords_and_secret_query_values_are_hidden(uri: str, shown: str) -> None:
    assert shown_uri(uri) == shown


def test_the_mlflow_ui_line_of_a_server_with_a_password_hides_it(tmp_path: Path) -> None:
    paths = StudyPaths(tmp_path, tmp_path / "s", "https://me:s3cret@mlflow.example.org", "x")
    line = mlflow_ui_command(paths)
    assert "s3cret" not in line and "https://me:***@mlflow.example.org" in line


def test_a_run_against_a_store_with_a_password_never_prints_it(tmp_path: Path) -> None:
    """The header and the error of an unreachable PostgreSQL store, as a user's terminal gets
    them (the header printed the URI as it was)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": "postgresql://nc:s3cret@127.0.0.1:1/mlflow"}
    done = subprocess.run(
        [sys.executable, "-m", "ncstudy.run", str(REPO / "studies" / "quickstart.yaml")]
        + ["--output", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "s3cret" not in out
    assert "(runs: postgresql://nc:***@127.0.0.1:1/mlflow)" in out
