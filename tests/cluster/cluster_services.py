"""Real services for the cluster tests, all on 127.0.0.1 with free ports and throw-away folders:
a PostgreSQL server (initdb + pg_ctl; as the `postgres` user when run as root, since the server
refuses root), an `mlflow server` with a PostgreSQL backend store and served artifacts, Ray
nodes on loopback, and helpers that run `python -m ncstudy.run` against them."""

from __future__ import annotations

import copy
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from ray.cluster_utils import AutoscalingCluster

# Ray maps a loopback address to the machine's interface IP unless this is 0 (it then uses
# 127.0.0.1, as it does on macOS): every process of the test stays on loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
PG_USER = "ncstudy"
PG_PASSWORD = "cluster-test-pw"  # a throw-away server on loopback, deleted after the tests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (package `postgresql`), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(dirs[-1]).parent if dirs else None


class Postgres:
    """A PostgreSQL server in a temporary folder, password login over TCP on 127.0.0.1."""

    def __init__(self) -> None:
        bindir = pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server not installed: apt-get install -y postgresql")
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="ncstudy-pg-"))
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            pwd.getpwnam("postgres")
            shutil.chown(self.root, "postgres")
            self.user_prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.user_prefix, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> Postgres:
        pwfile = self.root / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        if self.user_prefix:
            shutil.chown(pwfile, "postgres")
        data = self.root / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-o", opts,
            "-l", str(self.root / "log"), "-w", "start",
        )  # fmt: skip
        return self

    def url(self, database: str, password: str = PG_PASSWORD) -> str:
        return f"postgresql://{PG_USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        conn = psycopg.connect(self.url("postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()
        return self.url(name)

    def stop(self) -> None:
        data = self.root / "data"
        if data.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with a PostgreSQL backend store, artifacts served from `artifacts`."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        mlflow = Path(sys.executable).parent / "mlflow"
        cmd = [
            str(mlflow), "server", "--backend-store-uri", self.backend_uri,
            "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and workers
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def study_yaml(tmp: Path, name: str, **changes: Any) -> Path:
    """A small digits study (CPU seconds per trial) with `changes` merged in at the top level."""
    study: dict[str, Any] = {
        "name": name,
        "output_dir": str(tmp / "runs"),
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "train": {"epochs": 2, "lr": 0.1},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
        "evaluation": {"nc_metrics": False},
    }
    study.update(changes)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m ncstudy.run` on the loopback cluster."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NCSTUDY_SHARED_FS": "1", **LOOPBACK_ONLY}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def cli(study: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "ncstudy.run", str(study), *args]


def run_cli(study: Path, *args: str, env: dict[str, str], timeout: float = 600):
    """Run the study to its end; the CompletedProcess."""
    return subprocess.run(cli(study, *args), capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip


def trial_runs(client: Any, study: str) -> list[Any]:
    """The trial (child) runs of a study's MLflow experiment."""
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]


def steps(client: Any, run_id: str, metric: str) -> list[int]:
    """The steps at which `metric` was logged, in logging order (duplicates kept)."""
    history = client.get_metric_history(run_id, metric)
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


def wait_for(predicate: Any, timeout: float, what: str, proc: Any = None) -> None:
    """Poll `predicate` every 0.5 s; fail naming `what` (and the process output) on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process ended before {what}: {out[-4000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def isolation_problem() -> str | None:
    """Why this process is not isolated enough for `ray stop --force`, or None."""
    outer = os.environ.get("NCSTUDY_OUTER_PIDNS")
    if not outer:
        return "run through tests/cluster/isolated.sh (own PID + network namespace)"
    if os.readlink("/proc/self/ns/pid") == outer:
        return "same PID namespace as the caller: `ray stop --force` would see other Ray clusters"
    if [name for _, name in socket.if_nameindex()] != ["lo"]:
        return "not in a private network namespace"
    return None


# The fake provider's cluster config (what Ray's fake_multi_node/example.yaml holds; the wheel
# does not ship that file, which AutoscalingCluster reads).
FAKE_CLUSTER = {
    "cluster_name": "ncstudy-fake",
    "max_workers": 2,
    "provider": {
        "type": "fake_multinode",
        "use_node_id_as_ip": True,
        "disable_node_updaters": True,
        "disable_launch_config_check": True,
    },
    "head_node_type": "ray.head.default",
    "auth": {},
    "upscaling_speed": 1.0,
    "docker": {},
    **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                           "worker_setup_commands", "head_start_ray_commands",
                           "worker_start_ray_commands", "cluster_synced_files",
                           "rsync_exclude", "rsync_filter")},
    "file_mounts": {},
    "file_mounts_sync_continuously": False,
}  # fmt: skip


class FakeAutoscalingCluster(AutoscalingCluster):
    """ray.cluster_utils.AutoscalingCluster with its base config given here, not read from
    the file the wheel lacks. Its start() and shutdown() run `ray stop --force`: use it only
    where `isolation_problem()` is None."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False,
                         **config_kwargs):  # fmt: skip
        config = copy.deepcopy(FAKE_CLUSTER)
        config["available_node_types"] = {
            **worker_node_types,
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
        }
        config.update(config_kwargs)
        return config

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Start it with this interpreter's `ray` command first on PATH (start() and the fake
        provider run `ray start` / `ray stop` by name)."""
        bindir = str(Path(sys.executable).parent)
        if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        super().start(*args, **kwargs)
