"""Cases 2 and 3 on a four-raylet loopback cluster: a head with no custom resource, two
worker nodes with one `slot` each, one node with two `pair`s (and CPUs to spare on each).
Resources force placement: a `workers_per_trial: 2` trial asking `resources.custom: {slot: 1}`
per worker needs both slot nodes; asking `{pair: 1}` it runs on the pair node alone. Case 2:
the two-node trial trains, its metrics equal the one-node trial's (same seed: gloo all-reduce
over loopback is the same sum), its checkpoint is on the shared storage path; again with
`loader: ffcv`. Case 3: the node a trial runs on dies (its raylet SIGKILLed by PID, with the
worker processes it started); the trial resumes from its last checkpoint on the other slot
node, every epoch in MLflow exactly once, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_services import (
    LOOPBACK_ONLY,
    cli,
    cli_env,
    steps,
    study_yaml,
    trial_runs,
    wait_for,
)
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def four_nodes() -> Iterator[tuple[object, dict[str, object]]]:
    """The cluster and its worker nodes by role: slot_a, slot_b, pair."""
    from ray.cluster_utils import Cluster

    saved = {k: os.environ.get(k) for k in LOOPBACK_ONLY}
    os.environ.update(LOOPBACK_ONLY)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    # CPUs to spare beside the custom resources: a trial's Tune process (0.05 CPU) may land on
    # any node and must not take the CPU a Train worker needs there
    ip = "127.0.0.1"
    nodes = {
        "slot_a": cluster.add_node(num_cpus=2, resources={"slot": 1}, node_ip_address=ip),
        "slot_b": cluster.add_node(num_cpus=2, resources={"slot": 1}, node_ip_address=ip),
        "pair": cluster.add_node(num_cpus=3, resources={"pair": 2}, node_ip_address=ip),
    }
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _ray_query(address: str, expression: str) -> object:
    """Evaluate `expression` (JSON-able) in a fresh driver connected to the cluster: a
    subprocess, so that the test process itself never becomes a Ray driver."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='error'); "
        f"print('RESULT=' + json.dumps({expression}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env(), timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT="))
    return json.loads(line[len("RESULT=") :])


def _train_workers_by_node(address: str) -> dict[str, int]:
    """Ray Train worker actors of the cluster's history (alive or dead) per node id, from the
    GCS actor table."""
    table = _ray_query(
        address,
        "[(a['ActorClassName'], a['Address']['NodeID']) "
        "for a in ray._private.state.actors().values()]",
    )
    out: dict[str, int] = {}
    for name, node in table:  # type: ignore[union-attr]
        if "TrainWorker" in name:
            out[node] = out.get(node, 0) + 1
    return out


def _ddp_study(tmp: Path, name: str, resource: str, dataset: dict | None) -> Path:
    return study_yaml(
        tmp, name,
        losses=[{"name": "normface"}],
        train={"epochs": 2, "lr": 0.1},
        resources={"workers_per_trial": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1,
                   "custom": {resource: 1}},
        **({"dataset": dataset} if dataset else {}),
    )  # fmt: skip


def _histories(mlf: MlflowClient, run_id: str) -> dict[str, list[float]]:
    names = ("train/loss", "val/acc1", "test/acc1")
    return {n: [m.value for m in mlf.get_metric_history(run_id, n)] for n in names}


def _two_nodes_vs_one(
    four_nodes, tmp_path: Path, shared: Path, tag: str, dataset: dict | None = None
) -> None:
    cluster, nodes = four_nodes
    env = cli_env()  # MLflow in a SQLite file on the shared path (NCSTUDY_SHARED_FS=1)
    procs = {}
    for resource in ("slot", "pair"):
        folder = tmp_path / resource
        folder.mkdir()
        study = _ddp_study(folder, f"ddp-{tag}-{resource}", resource, dataset)
        args = ("--address", cluster.address, "--storage-path", str(shared))
        procs[resource] = (folder, subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env))  # fmt: skip
    found = {}
    for resource, (folder, proc) in procs.items():
        out = proc.communicate(timeout=600)[0]
        assert proc.returncode == 0, out
        mlf = MlflowClient(f"sqlite:///{folder / 'runs' / 'mlflow.db'}")
        (run,) = trial_runs(mlf, f"ddp-{tag}-{resource}")
        assert run.info.status == "FINISHED" and steps(mlf, run.info.run_id, "epoch") == [1, 2]
        found[resource] = _histories(mlf, run.info.run_id)
        # the Train run's checkpoints are on the shared storage path
        train_dir = shared / f"ddp-{tag}-{resource}" / "train" / run.info.run_name
        assert list(train_dir.glob("checkpoint_*")), list(shared.rglob("*"))[:20]
    # placement: two workers on the two slot nodes, one each; the pair node hosted two
    workers = _train_workers_by_node(cluster.address)
    ids = {role: node.node_id for role, node in nodes.items()}
    assert workers.get(ids["slot_a"], 0) >= 1 and workers.get(ids["slot_b"], 0) >= 1, workers
    assert workers.get(ids["pair"], 0) >= 2, workers
    # same seed, same data shards, same all-reduced gradients: the same numbers
    for name, values in found["slot"].items():
        assert values and values == pytest.approx(found["pair"][name], rel=1e-6, abs=1e-9), name


def test_one_trial_across_two_nodes(four_nodes, tmp_path: Path) -> None:
    _two_nodes_vs_one(four_nodes, tmp_path, tmp_path / "shared", "tv")


def test_one_ffcv_trial_across_two_nodes(four_nodes, tmp_path: Path) -> None:
    pytest.importorskip("ffcv")
    from data_prep.write_beton import main as write_beton
    from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip

    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    shared = tmp_path / "shared"
    root = extract_imagefolder_zip(shared_cifar10_zip(), shared / "cifar", {"train": 16, "test": 4})
    betons = shared / "betons"  # on the shared path: every node reads the same files
    args = ["--dataset", "cifar10_jpeg", "--root", str(root), "--splits", "train", "test"]
    write_beton([*args, "--out", str(betons)])
    dataset = {"name": "cifar10_jpeg", "root": str(root), "loader": "ffcv",
               "beton_dir": str(betons), "image_size": 16, "augment": False}  # fmt: skip
    _two_nodes_vs_one(four_nodes, tmp_path, shared, "ffcv", dataset)


def _raylet_pid(node: object) -> int:
    import ray._private.ray_constants as rc

    (info,) = node.all_processes[rc.PROCESS_TYPE_RAYLET]  # type: ignore[attr-defined]
    return info.process.pid


def _kill_node(node: object) -> None:
    """The machine of a node dies: SIGKILL its raylet by PID, and with it the worker processes
    the raylet started (on a real machine they go with it; a bare raylet kill leaves a running
    actor's process working on without its node)."""
    import psutil

    raylet = psutil.Process(_raylet_pid(node))
    workers = raylet.children(recursive=True)
    assert workers, "the node runs no worker process: nothing would be lost"
    raylet.send_signal(signal.SIGKILL)
    for proc in workers:
        proc.send_signal(signal.SIGKILL)


def test_node_killed_mid_trial(four_nodes, tmp_path: Path) -> None:
    """Runs last in this module: it leaves one slot node dead."""
    cluster, nodes = four_nodes
    epochs = 8
    study = study_yaml(
        tmp_path, "node-dies",
        losses=[{"name": "ce"}],
        dataset={"name": "digits", "image_size": 16},
        train={"epochs": epochs, "lr": 0.05},
        evaluation={"nc_metrics": False, "checkpoint_every": 1},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1,
                   "custom": {"slot": 1}, "trial_max_failures": 2},
    )  # fmt: skip
    shared = tmp_path / "shared"
    args = ("--address", cluster.address, "--storage-path", str(shared))
    proc = subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cli_env())  # fmt: skip
    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    trial_dir = shared / "node-dies" / "tune" / "ce-b64-s0"

    def checkpointed_epoch_2() -> bool:  # epoch 2 logged, its checkpoint on the shared path
        return len(list(trial_dir.glob("checkpoint_*"))) >= 2

    try:
        wait_for(checkpointed_epoch_2, 300, "the checkpoint of epoch 2", proc)
        (run,) = trial_runs(mlf, "node-dies")
        first_node = run.data.tags["ncstudy.node_id"]
        role = next(r for r, n in nodes.items() if n.node_id == first_node)
        assert role in ("slot_a", "slot_b")  # the resource placed it on a slot node
        _kill_node(nodes[role])
        out = proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    (run,) = trial_runs(mlf, "node-dies")
    assert run.info.status == "FINISHED"
    survivor = {"slot_a": "slot_b", "slot_b": "slot_a"}[role]
    ids = {r: n.node_id for r, n in nodes.items()}
    where = {"tag": run.data.tags["ncstudy.node_id"], "killed": role, "nodes": ids, "out": out}
    assert run.data.tags["ncstudy.node_id"] == nodes[survivor].node_id, where  # resumed elsewhere
    # every epoch exactly once: a restart from scratch would log epochs 1 and 2 again, a lost
    # checkpoint would skip one
    assert steps(mlf, run.info.run_id, "epoch") == list(range(1, epochs + 1))
    for key in run.data.metrics:  # and every history holds each step once (issue 19)
        counts = Counter(m.step for m in mlf.get_metric_history(run.info.run_id, key))
        assert max(counts.values()) == 1, (key, counts)

    # the GCS marks the node dead once its health checks fail (seconds; longer under load)
    def marked_dead() -> bool:
        query = "[(n['NodeID'], n['Alive']) for n in ray.nodes()]"
        return dict(_ray_query(cluster.address, query))[nodes[role].node_id] is False

    wait_for(marked_dead, 120, "the GCS to mark the killed node dead")
