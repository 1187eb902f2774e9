"""ncstudy.cluster: the Ray address, the storage and tracking checks, and how many trials fit a
cluster."""

from __future__ import annotations

from typing import Any

import pytest

from ncstudy import cluster

# ------------------------------------------------------------------- ncstudy.cluster


def test_resolve_address_prefers_cli_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--address beats RAY_ADDRESS; blank counts as unset; nothing means a local instance."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(None) is None
    assert cluster.resolve_address("  ") is None
    assert cluster.resolve_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster.resolve_address(None) == "10.0.0.5:6379"
    assert cluster.resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert cluster.resolve_address(None) is None


@pytest.mark.parametrize(
    "path", ["s3://bucket/runs", "gs://b/p", "gcs://b/p", "abfs://c@acct/p", "S3://B/p"]
)
def test_check_storage_path_accepts_object_stores(path: str) -> None:
    """Object stores are shared by construction, on any number of nodes."""
    cluster.check_storage_path(path, node_count=8, shared_fs=False)


def test_check_storage_path_single_node_accepts_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node: a local folder (relative or absolute) is fine."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_storage_path("./ncstudy-runs", node_count=1)
    cluster.check_storage_path("/tmp/runs", node_count=1)


@pytest.mark.parametrize("path", ["/home/ray/runs", "./ncstudy-runs", "file:///data/runs"])
def test_check_storage_path_rejects_local_on_multi_node(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several nodes and a local path: an error that names the path, the count and the fix."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    with pytest.raises(ValueError) as info:
        cluster.check_storage_path(path, node_count=3)
    message = str(info.value)
    assert message.startswith(
        f"storage_path '{path}' is a local path but the Ray cluster has 3 nodes; "
        "use a shared location: s3://bucket/prefix, gs://bucket/prefix, or a path on a shared "
        "filesystem mounted at the same place on every node (NFS) and pass "
        "--storage-path / NCSTUDY_STORAGE_PATH"
    )


@pytest.mark.parametrize("path", ["/home/ray/runs", "file:///data/runs"])
def test_check_storage_path_existing_cluster_needs_shared_storage(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to a cluster whose head is its only node now (autoscaling from zero): a local
    path is refused all the same; object stores and declared-shared paths pass."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    with pytest.raises(ValueError, match="connected to an existing Ray cluster"):
        cluster.check_storage_path(path, node_count=1, existing_cluster=True)
    cluster.check_storage_path("s3://bucket/p", node_count=1, existing_cluster=True)
    cluster.check_storage_path(path, node_count=1, existing_cluster=True, shared_fs=True)
    cluster.check_storage_path(path, node_count=1)  # local mode: one machine, any folder


def test_check_tracking_uri_on_an_existing_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials on other nodes log to MLflow: a server, or a store file declared shared."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_tracking_uri("http://mlflow:5000")
    cluster.check_tracking_uri("https://mlflow.example.org")
    cluster.check_tracking_uri("databricks")
    for local in ("sqlite:////runs/mlflow.db", "file:///runs/mlruns", "/runs/mlruns"):
        with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
            cluster.check_tracking_uri(local)
        cluster.check_tracking_uri(local, shared_fs=True)


def test_check_storage_path_shared_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NFS path declared shared (flag or NCSTUDY_SHARED_FS=1) passes if absolute."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_storage_path("/mnt/nfs/runs", node_count=4, shared_fs=True)
    monkeypatch.setenv("NCSTUDY_SHARED_FS", "1")
    cluster.check_storage_path("/mnt/nfs/runs", node_count=4)
    cluster.check_storage_path("file:///mnt/nfs/runs", node_count=4)
    with pytest.raises(ValueError, match="relative"):
        cluster.check_storage_path("nfs/runs", node_count=4)
    with pytest.raises(ValueError, match="local path"):  # the explicit flag wins over the env
        cluster.check_storage_path("/mnt/nfs/runs", node_count=4, shared_fs=False)


@pytest.mark.parametrize("path,count", [("http://host/x", 2), ("", 1), ("/x", 0)])
def test_check_storage_path_rejects_bad_input(path: str, count: int) -> None:
    """Unsupported schemes, empty paths and impossible node counts are errors."""
    with pytest.raises(ValueError):
        cluster.check_storage_path(path, node_count=count)


def _brute_force_fit(resources: dict[str, float], demand: dict[str, float]) -> int:
    """Place trials one by one until one no longer fits (independent of the closed form)."""
    left, placed = dict(resources), 0
    while all(left.get(name, 0.0) - amount >= -1e-9 for name, amount in demand.items()):
        left = {name: left.get(name, 0.0) - demand.get(name, 0.0) for name in left | demand}
        placed += 1
    return placed


@pytest.mark.parametrize(
    "resources,per_trial,expected",
    [
        # 2 workers x (4 CPU, 1 GPU) + 1 driver CPU = 9 CPU, 2 GPU: GPUs bind (4 // 2).
        (
            {"CPU": 32, "GPU": 4},
            {"workers_per_trial": 2, "cpus_per_worker": 4, "gpus_per_worker": 1},
            2,
        ),
        # CPU only, the 2-core dev box: 1 + 2 x 0.5 = 2 CPU per trial.
        ({"CPU": 2}, {"workers_per_trial": 2, "cpus_per_worker": 0.5}, 1),
        # Fractional GPUs: 4 trials share one GPU; CPU 8 // 2 = 4 as well.
        ({"CPU": 8, "GPU": 1}, {"gpus_per_worker": 0.25}, 4),
        # 0.1 x 3 in floats is 0.30000000000000004 > 0.3: still 3 trials.
        ({"CPU": 0.3}, {"cpus_per_worker": 0.1, "driver_cpus": 0.0}, 3),
        # Head with CPU 0 plus 3 GPU nodes of 8 CPU / 1 GPU.
        (
            {"CPU": 24, "GPU": 3, "memory": 1e11},
            {"workers_per_trial": 1, "cpus_per_worker": 6, "gpus_per_worker": 1},
            3,
        ),
    ],
)
def test_max_concurrent_trials_fits_the_cluster(
    resources: dict[str, float], per_trial: dict[str, Any], expected: int
) -> None:
    """Closed form agrees with the hand count and with placing trials one by one."""
    demand = cluster.trial_demand(per_trial)
    assert _brute_force_fit(resources, demand) == expected
    assert cluster.max_concurrent_trials(resources, per_trial, None) == expected
    assert cluster.max_concurrent_trials(resources, per_trial, 1) == 1
    assert cluster.max_concurrent_trials(resources, per_trial, 100) == expected


def test_max_concurrent_trials_errors_and_existing_clusters() -> None:
    """No fit is an error naming the need. An existing cluster may autoscale: the YAML's cap is
    used as given (even beyond what fits now); without a cap, what fits now, and nothing
    fitting (a 0-CPU head alone) asks for the cap."""
    gpu_trial = {"workers_per_trial": 2, "gpus_per_worker": 1}
    with pytest.raises(ValueError, match="GPU"):
        cluster.max_concurrent_trials({"CPU": 16}, gpu_trial, 4)
    assert cluster.max_concurrent_trials({"CPU": 0}, gpu_trial, 6, existing_cluster=True) == 6
    assert cluster.max_concurrent_trials({"CPU": 8, "GPU": 2}, gpu_trial, 6) == 1
    assert (
        cluster.max_concurrent_trials({"CPU": 8, "GPU": 4}, gpu_trial, None, existing_cluster=True)
        == 2
    )
    with pytest.raises(ValueError, match="set resources.max_concurrent_trials"):
        cluster.max_concurrent_trials({"CPU": 0}, gpu_trial, None, existing_cluster=True)
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        cluster.max_concurrent_trials({"CPU": 8}, gpu_trial, 0)
    with pytest.raises(ValueError, match="workers_per_trial"):
        cluster.trial_demand({"workers_per_trial": 0})
    with pytest.raises(ValueError, match="gpus_per_worker"):
        cluster.trial_demand({"gpus_per_worker": -1})
    with pytest.raises(ValueError, match="gpu_per_worker"):
        cluster.trial_demand({"gpu_per_worker": 1})
    with pytest.raises(ValueError, match="no resources"):
        cluster.max_concurrent_trials({"CPU": 8}, {"cpus_per_worker": 0, "driver_cpus": 0}, None)
