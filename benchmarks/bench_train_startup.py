"""Where a Ray Train trial's start-up goes: the same 1-epoch digits trial as bench_trial.py,
through ncstudy's own TorchTrainer set-up (`ncstudy.trial._train_with_ray_train`, without the
Tune layer), timed from the driver and from inside the worker, plus Ray's timeline of actor
and task events (controller, worker group) and the in-process wall time of the same trial.

    python benchmarks/bench_train_startup.py [--rounds 2] [--workers 1] [--no-mlflow]

Each round is a fresh trial in the same Ray session (the first also pays one-off costs).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
from bench_trial import make_study

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext

TRACE = Path(tempfile.mkdtemp(prefix="ncstudy-startup-")) / "worker.jsonl"


def traced_entry(config: dict) -> None:
    """ncstudy's worker entry, with wall-clock stamps of its phases (shipped to the worker)."""
    import json as _json
    import time as _time

    stamps = {"worker_entry": _time.time()}
    from ncstudy import train as worker_module

    stamps["worker_imported_ncstudy_train"] = _time.time()
    import cProfile

    profile = cProfile.Profile()
    profile.runcall(worker_module.ray_train_entry, config)
    profile.dump_stats(str(TRACE.with_suffix(".prof")))
    stamps["worker_done"] = _time.time()
    with open(TRACE, "a") as f:
        f.write(_json.dumps(stamps) + "\n")


def mlflow_run(out: Path, trial) -> dict | None:
    """A real MLflow child run in a local SQLite store, as run_study would give the trial."""
    from ncstudy import tracking

    uri = f"sqlite:///{out}/mlflow.db"
    mlf = tracking.client(uri)
    exp = tracking.ensure_experiment(mlf, "startup", out / "mlartifacts")
    parent = tracking.ensure_parent_run(mlf, exp, "startup", "name: startup\n")
    return {"tracking_uri": uri, "run_id": tracking.ensure_child_run(mlf, exp, parent, trial)}


def one_round(trial, run, out: Path, label: str) -> dict[str, float]:
    """Run one Train trial; return the driver's and the worker's stamps (seconds since fit).
    Outside Tune, Tune's report callback (which needs a Tune session) is a no-op callback."""
    import ray.tune.integration.ray_train as tune_bridge
    from ray.train.v2.api.callback import UserCallback

    import ncstudy.train_entry
    from ncstudy.trial import _train_with_ray_train

    real, real_callback = ncstudy.train_entry.ray_train_entry, tune_bridge.TuneReportCallback
    ncstudy.train_entry.ray_train_entry = traced_entry
    tune_bridge.TuneReportCallback = UserCallback
    try:
        t0 = time.time()
        trial = trial.model_copy(update={"key": f"{trial.key}-{label}"})
        metrics = _train_with_ray_train(trial, run, {"train_storage": str(out / "train")})
        t1 = time.time()
    finally:
        ncstudy.train_entry.ray_train_entry = real
        tune_bridge.TuneReportCallback = real_callback
    assert "train/loss" in metrics, metrics
    worker = json.loads(TRACE.read_text().splitlines()[-1])
    stamps = {"fit_returned": t1 - t0}
    stamps |= {k: v - t0 for k, v in worker.items()}
    return stamps


def timeline_summary(t0: float, path: Path) -> list[tuple[float, float, str]]:
    """(start s, duration s, name) of Ray's timeline events after t0, longest phases first."""
    import ray

    ray.timeline(filename=str(path))
    events = json.loads(path.read_text())
    rows = []
    for e in events:
        if e.get("ph") != "X":
            continue
        start = e["ts"] / 1e6 - t0
        if start < 0:
            continue
        rows.append((start, e["dur"] / 1e6, f"{e.get('cat', '')}:{e.get('name', '')}"))
    return sorted(rows)


def print_profile(path: Path, top: int = 14) -> None:
    """The worker entry's heaviest calls (cumulative seconds, cProfile in the worker)."""
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(str(path), stream=text).sort_stats("cumulative").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if line.strip()]
    for line in lines[-top:]:
        print(f"   worker profile {line}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument(
        "--api-server-env",
        action="store_true",
        help="point Ray's state API at this session's dashboard (RAY_API_SERVER_ADDRESS)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(tempfile.mkdtemp(prefix="ncstudy-startup-"))
    spec = make_study("startup", str(out), 1, workers=args.workers, fastpath=False)
    trial = expand(parse_study(spec))[0]

    from ncstudy.train import train_loop

    for first in (True, False):  # the first call pays the imports and the data's first load
        started = time.perf_counter()
        train_loop(trial, LocalContext())
        which = "first" if first else "again"
        print(f"in-process 1-epoch trial ({which})          {time.perf_counter() - started:6.2f} s")

    import ray

    kwargs = {}
    if args.api_server_env:  # inherited by every Ray process of this session
        port = free_port()
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        kwargs["dashboard_port"] = port
    started = time.perf_counter()
    ray.init(
        address="local", num_cpus=2, dashboard_host="127.0.0.1", logging_level="warning", **kwargs
    )
    print(f"ray.init (local, 2 CPUs)                   {time.perf_counter() - started:6.2f} s")
    run = None if args.no_mlflow else mlflow_run(out, trial)
    for r in range(args.rounds):
        t0 = time.time()
        stamps = one_round(trial, run, out, f"r{r}")
        print(f"-- round {r} ({args.workers} worker(s), MLflow {'off' if run is None else 'on'})")
        for name, value in sorted(stamps.items(), key=lambda kv: kv[1]):
            print(f"   {name:34s} {value:7.2f} s after fit() was called")
        print_profile(TRACE.with_suffix(".prof"))
        events = timeline_summary(t0, out / f"timeline{r}.json")
        for start, dur, name in events:
            if dur >= 0.2:
                print(f"   ray event {name[:60]:60s} at {start:6.2f} s for {dur:6.2f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
