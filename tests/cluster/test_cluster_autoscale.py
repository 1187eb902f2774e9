"""Case 1, autoscaling for real: Ray's fake multi-node provider (the one Ray's autoscaler tests
use) with a head that has no room for these trials (no `accel`) and one worker type
(`min_workers: 0`, `max_workers: 2`) carrying a custom resource `accel` that stands in for a
GPU. A study whose trials ask `resources.custom: {accel: 1}` makes the autoscaler add nodes;
its trials run on them; the idle nodes are removed afterwards.

AutoscalingCluster runs `ray stop --force` (kills every Ray process it can see): this test runs
only inside its own PID + network namespace, launched by tests/cluster/isolated.sh (.ci/run does
that), and skips anywhere else."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from cluster_services import (
    FakeAutoscalingCluster,
    cli,
    cli_env,
    isolation_problem,
    steps,
    study_yaml,
    trial_runs,
)
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def autoscaling_cluster():
    reason = isolation_problem()
    if reason is not None:
        pytest.skip(reason)
    import ray

    cluster = FakeAutoscalingCluster(
        # a CPU the trials could use but no `accel`: a trial that lost its custom resource
        # request would run here, on no added node, and fail the node-id check below
        head_resources={"CPU": 1},
        worker_node_types={
            "accel_node": {
                "resources": {"CPU": 1, "accel": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            }
        },
        idle_timeout_minutes=0.15,  # 9 s idle and a node goes
    )
    cluster.start()
    ray.init(address="auto", logging_level="error")
    try:
        yield ray
    finally:
        ray.shutdown()
        cluster.shutdown()


def _accel_nodes(ray) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("accel", 0) > 0}


def test_autoscaler_adds_nodes_for_waiting_trials(autoscaling_cluster, tmp_path: Path) -> None:
    ray = autoscaling_cluster
    assert _accel_nodes(ray) == set()  # min_workers 0: nothing but the head
    study = study_yaml(
        tmp_path, "autoscale",
        train={"epochs": 3, "lr": 0.1},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2,
                   "custom": {"accel": 1}},
    )  # fmt: skip
    args = ("--address", "auto", "--storage-path", str(tmp_path / "shared"))
    proc = subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cli_env())  # fmt: skip
    seen: set[str] = set()
    counts = []
    while proc.poll() is None:
        now = _accel_nodes(ray)
        seen |= now
        counts.append(len(now))
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out
    assert counts[0] == 0 and max(counts) >= 1, counts  # nodes came because trials waited
    assert len(seen) <= 2  # max_workers

    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = trial_runs(mlf, "autoscale")
    assert sorted(r.info.run_name for r in runs) == ["ce-b64-s0", "normface-t0.1-b64-s0"]
    for run in runs:
        assert run.info.status == "FINISHED" and steps(mlf, run.info.run_id, "epoch") == [1, 2, 3]
        assert run.data.tags["ncstudy.node_id"] in seen  # ran on a node the autoscaler added

    deadline = time.time() + 180
    while _accel_nodes(ray) and time.time() < deadline:
        time.sleep(1)
    assert _accel_nodes(ray) == set(), "idle nodes were not removed"
