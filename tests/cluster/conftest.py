"""Session services of the cluster tests: one PostgreSQL server, one MLflow server on it, a
shared folder standing in for the cluster's shared storage, and a two-node Ray cluster on
loopback. Each is started once, on 127.0.0.1, and stopped (its folders deleted) at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_services import LOOPBACK_ONLY, MlflowServer, Postgres, pg_bindir


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """The 'shared filesystem' of the loopback cluster: Ray results, checkpoints, artifacts."""
    path = Path(tempfile.mkdtemp(prefix="ncstudy-shared-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if pg_bindir() is None:
        message = "PostgreSQL server not installed (apt-get install -y postgresql; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = Postgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, shared_dir: Path) -> Iterator[MlflowServer]:
    backend = postgres.create_database("mlflow")
    log = shared_dir / "mlflow-server.log"
    server = MlflowServer(backend, shared_dir / "mlflow-artifacts", log).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def optuna_url(postgres: Postgres) -> str:
    """A PostgreSQL database for the Optuna studies of searches (NCSTUDY_OPTUNA_STORAGE)."""
    return postgres.create_database("optuna")


@pytest.fixture(scope="session")
def ray_two_nodes() -> Iterator[object]:
    """A Ray head and a second raylet on loopback, two logical CPUs each."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
