"""Cluster-mode start-up costs on one machine (loopback raylets), each against a baseline in
the same process:

1. `--part autoscale`: time from a Tune trial becoming pending (Tuner.fit starts) to its first
   line running on a node the fake autoscaler adds for it (resource `accel`, min_workers 0),
   against the same trial once that node is up (no node to add). Runs `ray stop --force`
   (AutoscalingCluster): only inside its own namespaces, i.e. through
   `bash tests/cluster/isolated.sh python benchmarks/bench_cluster.py --part autoscale`.
2. `--part train`: per-trial start-up of a 2-worker Ray Train trial (TorchTrainer.fit() to the
   first line of both workers, gloo group formed) with its workers on two nodes, against the
   same trial with both workers on one node.

    python benchmarks/bench_cluster.py --part train [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "cluster"))

from cluster_services import LOOPBACK_ONLY, FakeAutoscalingCluster, isolation_problem  # noqa: E402


def _timed_tune_trial(storage: str) -> float:
    """Seconds from Tuner.fit() to the first line of a trial that needs one `accel`."""
    from ray import tune

    def trainable(config: dict) -> None:
        tune.report({"started": time.time()})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1, "accel": 1}),
        run_config=tune.RunConfig(storage_path=storage, verbose=0),
    )
    t0 = time.time()
    result = tuner.fit()[0]
    return result.metrics["started"] - t0


def autoscale(rounds: int) -> None:
    problem = isolation_problem()
    if problem is not None:
        sys.exit(f"--part autoscale: {problem}")
    import ray

    cluster = FakeAutoscalingCluster(
        head_resources={"CPU": 0},
        worker_node_types={
            "accel_node": {
                "resources": {"CPU": 1, "accel": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 1,
            }
        },
        idle_timeout_minutes=0.1,
    )
    cluster.start()
    ray.init(address="auto", logging_level="error")
    cold, warm = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(rounds):
                while any(n["Alive"] and "accel" in n["Resources"] for n in ray.nodes()):
                    time.sleep(0.5)  # wait for the idle node to go: the next trial adds one
                cold.append(_timed_tune_trial(tmp))
                warm.append(_timed_tune_trial(tmp))  # the node is still up
    finally:
        ray.shutdown()
        cluster.shutdown()
    _print("pending -> running", {"fresh node (added)": cold, "node already up": warm})


def train(rounds: int) -> None:
    """Start the loopback cluster here; time the trials in a driver subprocess (this process
    hosts the cluster's head and never becomes a driver itself)."""
    import subprocess

    from ray.cluster_utils import Cluster

    os.environ.update(LOOPBACK_ONLY)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        for resources, cpus in (({"slot": 1}, 2), ({"slot": 1}, 2), ({"pair": 2}, 3)):
            cluster.add_node(num_cpus=cpus, resources=resources, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        cmd = [sys.executable, __file__, "--part", "train-driver", "--address", cluster.address]
        subprocess.run([*cmd, "--rounds", str(rounds)], check=True)
    finally:
        cluster.shutdown()


def train_driver(address: str, rounds: int) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address=address, logging_level="error")

    def loop(config: dict) -> None:
        import torch.distributed as dist

        dist.barrier()  # the gloo group across both workers is up
        rank = ray.train.get_context().get_world_rank()
        Path(config["out"], f"rank{rank}").write_text(str(time.time()))

    times: dict[str, list[float]] = {"2 nodes (slot)": [], "1 node (pair)": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(rounds):
                for label, resource in (("2 nodes (slot)", "slot"), ("1 node (pair)", "pair")):
                    out = Path(tmp, f"{resource}-{i}-started")
                    out.mkdir()
                    trainer = TorchTrainer(
                        loop,
                        train_loop_config={"out": str(out)},
                        scaling_config=ScalingConfig(
                            num_workers=2, resources_per_worker={"CPU": 1, resource: 1}
                        ),
                        run_config=RunConfig(name=f"{resource}-{i}", storage_path=tmp),
                    )
                    t0 = time.time()
                    trainer.fit()
                    started = [float(f.read_text()) for f in out.iterdir()]
                    assert len(started) == 2, started
                    times[label].append(max(started) - t0)
    finally:
        ray.shutdown()
    _print("2-worker Train trial start-up", times)


def _print(title: str, series: dict[str, list[float]]) -> None:
    base_label = list(series)[-1]
    base = statistics.median(series[base_label])
    print(f"{title} (seconds; median of {len(series[base_label])}, all rounds listed)")
    for label, values in series.items():
        med = statistics.median(values)
        listed = " ".join(f"{v:.2f}" for v in values)
        print(f"  {label:<22} {med:7.2f}   x{med / base:5.2f} of '{base_label}'   [{listed}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["autoscale", "train", "train-driver"], required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "train-driver":
        train_driver(args.address, args.rounds)
    else:
        (autoscale if args.part == "autoscale" else train)(args.rounds)


if __name__ == "__main__":
    main()
