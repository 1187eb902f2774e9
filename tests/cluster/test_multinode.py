"""Two Ray nodes on one machine (a head and a second raylet, separate processes on loopback,
each with its own CPUs): a study's trials land on both, results go to a shared storage path,
and every MLflow run completes. A local storage path without the shared-filesystem flag is
refused on an existing cluster before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


# Ray maps a loopback address to the machine's interface IP unless this is 0 (it then uses
# 127.0.0.1, as it does on macOS): every process of the test stays on loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def run_cli(tmp_path: Path, address: str, *extra: str, shared: bool) -> subprocess.CompletedProcess:
    study = {
        "name": "multinode",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "train": {"epochs": 2, "lr": 0.1},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
        "evaluation": {"nc_metrics": False},
    }
    path = tmp_path / "multinode.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **LOOPBACK_ONLY}
    env.pop("RAY_ADDRESS", None)
    env["NCSTUDY_SHARED_FS"] = "1" if shared else "0"
    cmd = [sys.executable, "-m", "ncstudy.run", str(path), "--address", address, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_local_storage_is_refused_on_two_nodes(two_nodes, tmp_path: Path) -> None:
    done = run_cli(tmp_path, two_nodes.address, shared=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is a local path but ncstudy is connected to an existing Ray cluster" in done.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_trials_land_on_both_nodes_with_shared_storage(two_nodes, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    done = run_cli(tmp_path, two_nodes.address, "--storage-path", str(shared), shared=True)
    assert done.returncode == 0, done.stdout + done.stderr

    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("multinode")
    children = [
        r for r in mlf.search_runs([exp.experiment_id]) if r.data.tags["ncstudy.role"] == "trial"
    ]
    assert sorted(r.info.run_name for r in children) == ["ce-b64-s0", "normface-t0.1-b64-s0"]
    assert all(r.info.status == "FINISHED" for r in children)
    # one CPU per node and one CPU per trial: the two concurrent trials need both nodes
    nodes = {r.data.tags["ncstudy.node_id"] for r in children}
    alive = {node.node_id for node in two_nodes.list_all_nodes()}
    assert len(nodes) == 2 and nodes <= alive
    # Ray results and checkpoints went to the shared path, not the study folder
    checkpoints = list((shared / "multinode" / "tune").glob("*/checkpoint_*"))
    assert {p.parent.name for p in checkpoints} == {"ce-b64-s0", "normface-t0.1-b64-s0"}
