"""Per-trial start-up overhead and training throughput of ncstudy trials.

1. Throughput: the worker loop (`train_loop`, in-process) against a bare PyTorch loop on the same
   model, loss, batch size and in-memory data, in the same process (samples/s and ratio).
2. Start-up: the same 1-epoch trial as a plain in-process call, as a Ray Tune trial on the
   single-worker fast path, and as a Ray Tune + Ray Train trial (1 and 2 workers); the overhead
   is each mode's wall time minus the in-process wall time.

    python benchmarks/bench_trial.py [--epochs 3] [--skip-ray]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext


def make_study(
    name: str, out: str, epochs: int, workers: int = 1, fastpath: bool = True, seeds: int = 1
) -> dict:
    return {
        "name": name,
        "output_dir": out,
        "dataset": {"name": "digits", "image_size": 16, "augment": False},
        "model": {"name": "small_cnn", "width": 16, "feature_dim": 32},
        "train": {"epochs": epochs, "lr": 0.1},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64], "seed": list(range(seeds))},
        "resources": {
            "workers_per_trial": workers,
            "cpus_per_worker": 1.0 if workers == 1 else 0.5,
            "single_worker_fastpath": fastpath,
            "max_concurrent_trials": 1,
        },
        "evaluation": {"every": epochs, "nc_metrics": False},
    }


def bare_loop_throughput(trial, epochs: int) -> float:
    """Samples/s of a plain PyTorch loop: same encoder + CE head, SGD, in-memory batches."""
    from ncstudy.data import build_data
    from ncstudy.models import build_model

    data = build_data(trial.dataset, trial.seed)
    images, labels = data.train.images, data.train.labels
    torch.manual_seed(0)
    encoder = build_model(trial.model, data.input_shape)
    head = torch.nn.Linear(encoder.feature_dim, data.num_classes)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=trial.lr, momentum=0.9, weight_decay=5e-4)
    b, n = trial.batch_size, (len(labels) // trial.batch_size) * trial.batch_size
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(labels))[:n]
        for i in range(0, n, b):
            idx = perm[i : i + b]
            loss = torch.nn.functional.cross_entropy(head(encoder(images[idx])), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
    return seen / (time.perf_counter() - start)


def loop_throughput(trial) -> float:
    """Samples/s of ncstudy's worker loop, from its own per-epoch timing (eval excluded)."""
    ctx = LocalContext()
    from ncstudy.train import train_loop

    train_loop(trial, ctx)
    rates = [r["perf/samples_per_second"] for r in ctx.reports]
    return sum(rates[1:]) / max(1, len(rates) - 1) if len(rates) > 1 else rates[0]


def timed_study(study: dict) -> float:
    from ncstudy.study import run_study

    start = time.perf_counter()
    rows = run_study(parse_study(study))
    assert all(r.status == "FINISHED" for r in rows), rows
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="ncstudy-bench-")
    trial = expand(parse_study(make_study("thr", out, args.epochs)))[0]

    bare = bare_loop_throughput(trial, args.epochs)
    ours = loop_throughput(trial)
    print(f"throughput  bare PyTorch loop   {bare:9.1f} samples/s")
    print(f"throughput  ncstudy train_loop  {ours:9.1f} samples/s   ratio {ours / bare:.2f}")
    if args.skip_ray:
        return

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, dashboard_host="127.0.0.1", logging_level="warning")
    print(f"start-up    ray.init (local, 2 CPUs)          {time.perf_counter() - start:6.2f} s")

    one_epoch = expand(parse_study(make_study("inproc", out, 1)))[0]
    start = time.perf_counter()
    from ncstudy.train import train_loop

    train_loop(one_epoch, LocalContext())
    base = time.perf_counter() - start
    print(f"wall        1-epoch trial in-process          {base:6.2f} s")
    modes = [
        ("Tune fast path (1 worker)", make_study("fast", out, 1)),
        ("Tune + Train (1 worker)", make_study("train1", out, 1, fastpath=False)),
        ("Tune + Train (2 workers)", make_study("train2", out, 1, workers=2)),
    ]
    for label, study in modes:
        wall = timed_study(study)
        print(f"overhead    {label:<30} {wall - base:6.2f} s  (wall {wall:.2f} s)")
    # what a large study pays per trial: 6 sequential trials against 1, minus the compute
    for label, fast, workers in (
        ("Tune fast path", True, 1),
        ("Tune + Train, 2 workers", False, 2),
    ):
        one = timed_study(make_study(f"m1{workers}", out, 1, workers, fast, seeds=1))
        six = timed_study(make_study(f"m6{workers}", out, 1, workers, fast, seeds=6))
        marginal = (six - one) / 5 - base
        print(
            f"marginal    {label:<30} {marginal:6.2f} s per extra trial "
            f"(1 trial: {one:.1f} s, 6 trials: {six:.1f} s)"
        )
    ray.shutdown()
    print(f"(outputs in {Path(out)})")


if __name__ == "__main__":
    main()
