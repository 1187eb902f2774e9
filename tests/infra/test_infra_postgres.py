"""The shipped cluster configurations keep their runs and Optuna studies in PostgreSQL, never in
a SQLite file: the KubeRay MLflow server reads a managed database's URL from a Secret, the
launcher configs run PostgreSQL on the head (Unix socket only). Offline checks, plus (marker
`cluster`) the launcher's own PostgreSQL start-up command run for real on this machine."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

INFRA = Path(__file__).resolve().parents[2] / "infra"
LAUNCHERS = sorted((INFRA / "ray").glob("*.yaml"))
SOCKET_DIR = "/var/lib/ncstudy-pg"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _mlflow_deployment() -> dict[str, Any]:
    return next(d for d in _docs(INFRA / "k8s" / "mlflow.yaml") if d["kind"] == "Deployment")


def test_k8s_mlflow_server_runs_on_postgres_from_a_secret() -> None:
    """No SQLite, no volume: the backend store URL is the Secret's, read by `mlflow server`
    through its MLFLOW_BACKEND_STORE_URI option; artifacts are served from the bucket."""
    import mlflow.cli

    text = (INFRA / "k8s" / "mlflow.yaml").read_text()
    assert "sqlite" not in text.lower()
    kinds = [d["kind"] for d in _docs(INFRA / "k8s" / "mlflow.yaml")]
    assert "PersistentVolumeClaim" not in kinds
    container = _mlflow_deployment()["spec"]["template"]["spec"]["containers"][0]
    assert "volumeMounts" not in container
    command = container["command"]
    assert command[:2] == ["mlflow", "server"] and "--backend-store-uri" not in command
    assert "--serve-artifacts" in command
    assert command[command.index("--artifacts-destination") + 1].startswith(
        "$(NCSTUDY_STORAGE_PATH)"
    )
    env = {e["name"]: e for e in container["env"]}
    ref = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ncstudy-mlflow-db", "key": "url"}  # required: no silent default
    # the server really takes its backend store from that variable
    option = next(p for p in mlflow.cli.server.params if p.name == "backend_store_uri")
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"


def test_k8s_ray_pods_read_the_optuna_database_from_a_secret() -> None:
    """The Optuna storage of searches is a database URL from a Secret on every Ray head."""
    for name in ("raycluster.yaml", "rayjob.yaml"):
        for doc in _docs(INFRA / "k8s" / name):
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e for e in head["env"]}
            assert "secretKeyRef" in env["NCSTUDY_OPTUNA_STORAGE"]["valueFrom"], name


def _launcher(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _pg_command(config: dict[str, Any]) -> str:
    return next(c for c in config["head_start_ray_commands"] if "initdb" in c)


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_stores_are_postgres_on_the_head(path: Path) -> None:
    """MLflow's backend store and the Optuna storage are PostgreSQL URLs on the head's socket;
    the database starts before the MLflow server, listens on no TCP port, and no password
    appears anywhere."""
    config = _launcher(path)
    text = path.read_text()
    assert "sqlite" not in text.lower()
    starts = config["head_start_ray_commands"]
    server = next(c for c in starts if "mlflow server" in c)
    assert starts.index(_pg_command(config)) < starts.index(server)
    assert "--serve-artifacts" in server
    backend = re.search(r'--backend-store-uri "([^"]+)"', server).group(1)
    setup = "\n".join(config["head_setup_commands"])
    optuna = re.search(r"NCSTUDY_OPTUNA_STORAGE=(\S+?)'", setup).group(1)
    for url, database in ((backend, "mlflow"), (optuna, "optuna")):
        parsed = make_url(url)
        assert parsed.get_backend_name() == "postgresql" and parsed.database == database
        assert parsed.password is None and parsed.query["host"] == SOCKET_DIR
    pg = _pg_command(config)
    assert pg.startswith(f"PG={SOCKET_DIR};") and "-k $PG" in pg and "listen_addresses=''" in pg
    # workers never need the database: only the head's env gets the Optuna URL
    assert "NCSTUDY_OPTUNA_STORAGE" not in "\n".join(config["worker_setup_commands"])


def test_image_carries_postgres_server_and_driver() -> None:
    """The launcher head runs PostgreSQL from the image; every node has the driver extra."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    apt = re.search(r"apt-get install[^&]+", text).group(0)
    assert "postgresql" in apt.split()
    assert 'pip install ".[ffcv,cluster,gpu]"' in text and "import psycopg" in text
    pyproject = (INFRA.parent / "pyproject.toml").read_text()
    assert re.search(r'cluster = \["psycopg\[binary\]==[\d.]+"\]', pyproject)


def test_readme_says_the_manifests_use_postgres() -> None:
    text = (INFRA / "README.md").read_text()
    assert "ncstudy-mlflow-db" in text and "PostgreSQL" in text
    assert "## Tested on one machine" in text and "pytest -q -m cluster" in text
    assert "tests/cluster/isolated.sh" in text


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the launcher command runs as root, as on a head")
@pytest.mark.parametrize("path", LAUNCHERS[:1], ids=lambda p: p.name)
def test_launcher_postgres_command_starts_a_database(path: Path) -> None:
    """The head's PostgreSQL command itself, run here (its folder moved to a temporary one):
    it creates both databases, a second run (a `ray up` again) leaves them, and the URLs the
    config gives MLflow and Optuna log in."""
    import psycopg

    bindirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bindirs:
        pytest.skip("PostgreSQL server not installed (apt-get install -y postgresql)")
    config = _launcher(path)
    root = tempfile.mkdtemp(prefix="ncstudy-pg-launcher-")
    command = _pg_command(config).replace(SOCKET_DIR, root)
    setup = "\n".join(config["head_setup_commands"]).replace(SOCKET_DIR, root)
    optuna = re.search(r"NCSTUDY_OPTUNA_STORAGE=(\S+?)'", setup).group(1)
    server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    backend = re.search(r'--backend-store-uri "([^"]+)"', server).group(1).replace(SOCKET_DIR, root)
    try:
        for _ in range(2):
            done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                  timeout=120)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        for url, database in ((optuna, "optuna"), (backend, "mlflow")):
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT current_database()").fetchone()[0] == database
        # postmaster.pid, line 6: the TCP addresses it listens on; empty = Unix socket only
        assert (Path(root) / "data" / "postmaster.pid").read_text().splitlines()[5] == ""
    finally:
        pg_ctl = str(bindirs[-1] / "pg_ctl")
        subprocess.run(["runuser", "-u", "postgres", "--", pg_ctl, "-D", f"{root}/data",
                        "-m", "fast", "-w", "stop"], capture_output=True)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)
