"""Bad cluster input is a clear error before anything is written (exit 2, the reason, no
study folder, no MLflow experiment, no Optuna study): an unreachable --address, an MLflow
server that is down, a PostgreSQL URL with a wrong password."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from cluster_services import PG_PASSWORD, cli_env, free_port, run_cli, study_yaml
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SEARCH = {
    "n_trials": 2,
    "sampler": "random",
    "pruner": "none",
    "space": {"temperature": {"low": 0.05, "high": 1.0}},
}


def _nothing_written(tmp_path: Path, mlflow_uri: str | None, name: str) -> None:
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").rglob("*"))
    if mlflow_uri is not None:
        assert MlflowClient(mlflow_uri).get_experiment_by_name(name) is None


def test_unreachable_address(mlflow_server, tmp_path: Path) -> None:
    study = study_yaml(tmp_path, "bad-address")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = run_cli(study, "--address", address, "--storage-path", str(tmp_path / "shared"),
                   env=cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri), timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--address {address}: no Ray cluster answers" in done.stderr
    assert time.monotonic() - started < 60  # no minute of ray.init retries
    _nothing_written(tmp_path, mlflow_server.uri, "bad-address")
    assert not (tmp_path / "shared").exists()


def test_mlflow_server_down(ray_two_nodes, tmp_path: Path) -> None:
    study = study_yaml(tmp_path, "bad-mlflow")
    down = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_cli(study, "--address", ray_two_nodes.address, "--storage-path",
                   str(tmp_path / "shared"), env=cli_env(MLFLOW_TRACKING_URI=down),
                   timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"MLFLOW_TRACKING_URI={down}: the MLflow server does not answer" in done.stderr
    assert time.monotonic() - started < 60  # not the MLflow client's minutes of retries
    _nothing_written(tmp_path, None, "bad-mlflow")
    assert not (tmp_path / "shared").exists()


def test_optuna_postgres_wrong_password(
    ray_two_nodes, mlflow_server, postgres, optuna_url: str, tmp_path: Path
) -> None:
    study = study_yaml(tmp_path, "bad-pg", losses=[{"name": "normface"}], search=SEARCH)
    wrong = postgres.url("optuna", password="not-" + PG_PASSWORD)
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri, NCSTUDY_OPTUNA_STORAGE=wrong)
    done = run_cli(study, "--address", ray_two_nodes.address, "--storage-path",
                   str(tmp_path / "shared"), env=env, timeout=120)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "NCSTUDY_OPTUNA_STORAGE=postgresql://ncstudy:***@127.0.0.1" in done.stderr
    assert "password authentication failed" in done.stderr
    assert PG_PASSWORD not in out  # the password is never printed, right or wrong
    _nothing_written(tmp_path, mlflow_server.uri, "bad-pg")
    assert "bad-pg-normface" not in optuna.get_all_study_names(optuna_url)


def test_mlflow_database_wrong_password(ray_two_nodes, postgres, tmp_path: Path) -> None:
    """MLFLOW_TRACKING_URI may name the database itself (no server): same check."""
    study = study_yaml(tmp_path, "bad-pg-mlflow")
    wrong = postgres.url("mlflow", password="wrong")
    done = run_cli(study, "--address", ray_two_nodes.address, "--storage-path",
                   str(tmp_path / "shared"), env=cli_env(MLFLOW_TRACKING_URI=wrong),
                   timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "MLFLOW_TRACKING_URI=postgresql://ncstudy:***@" in done.stderr
    assert "password authentication failed" in done.stderr
    _nothing_written(tmp_path, None, "bad-pg-mlflow")
