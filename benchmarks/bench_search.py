"""Optuna with pruning against the full grid, on a task where the grid is affordable: NormFace on
the digits, temperature x learning rate. For each method: the best validation accuracy among its
FINISHED trials (pruned trials never reach the end of training, so they are never picked), the
test accuracy of that trial, and its compute in trial-epochs (epochs actually trained, summed
over all trials, pruned ones included) as a fraction of the grid's.

    python benchmarks/bench_search.py [--epochs 12] [--n-trials 12] [--seeds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from ncstudy.config import parse_study
from ncstudy.study import run_study

TEMPERATURES = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
LRS = [0.05, 0.2]


@dataclass(frozen=True)
class Outcome:
    best_val: float  # best/val_acc1 of the best FINISHED trial
    test: float  # final/test_acc1 of that trial
    trial_epochs: int  # epochs trained, all trials (pruned included)
    finished: int
    pruned: int


def base(name: str, out: str, epochs: int) -> dict:
    return {
        "name": name,
        "output_dir": out,
        "dataset": {"name": "digits", "image_size": 12},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": epochs, "lr": 0.1, "base_batch_size": 64},
        "losses": [{"name": "normface"}],
        "grid": {"temperature": TEMPERATURES, "batch_size": [64], "axes": {"train.lr": LRS}},
        "resources": {"cpus_per_worker": 1},
        "evaluation": {"every": epochs, "nc_metrics": False},
    }


def outcome(out: str, name: str) -> Outcome:
    """The study's result, read from MLflow: the best FINISHED trial by validation accuracy."""
    mlf = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = mlf.get_experiment_by_name(name)
    runs = [r for r in mlf.search_runs([exp.experiment_id]) if "ncstudy.trial_key" in r.data.tags]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    best = max(finished, key=lambda r: r.data.metrics["best/val_acc1"])
    return Outcome(
        best_val=best.data.metrics["best/val_acc1"],
        test=best.data.metrics["final/test_acc1"],
        trial_epochs=sum(int(r.data.metrics.get("epoch", 0)) for r in runs),
        finished=len(finished),
        pruned=sum(r.info.status == "KILLED" for r in runs),
    )


def line(label: str, o: Outcome, grid: Outcome) -> str:
    fraction = o.trial_epochs / grid.trial_epochs
    gap = 100 * (grid.best_val - o.best_val)
    return (
        f"{label:<12} {o.finished:3d} finished {o.pruned:3d} pruned  "
        f"best val {100 * o.best_val:6.2f} % (test {100 * o.test:6.2f} %)  "
        f"{o.trial_epochs:5d} trial-epochs {fraction:5.2f}  gap {gap:+.2f} pts"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3, help="Optuna sampler seeds to average")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="ncstudy-search-")

    started = time.perf_counter()
    run_study(parse_study(base("grid", out, args.epochs)))
    grid = outcome(out, "grid")
    print(line("grid", grid, grid), flush=True)
    for pruner in ("asha", "none"):
        results = []
        for seed in range(args.seeds):
            name = f"optuna-{pruner}-{seed}"
            spec = base(name, out, args.epochs)
            spec["search"] = {
                "n_trials": args.n_trials,
                "sampler": "tpe",
                "seed": seed,
                "pruner": pruner,
                "grace_epochs": 2,
                "space": {"temperature": TEMPERATURES, "train.lr": LRS},
            }
            run_study(parse_study(spec))
            results.append(outcome(out, name))
            print(line(f"tpe+{pruner} s{seed}", results[-1], grid), flush=True)
        gap = statistics.mean(grid.best_val - r.best_val for r in results)
        frac = statistics.mean(r.trial_epochs / grid.trial_epochs for r in results)
        print(
            f"tpe+{pruner} mean over {args.seeds} seeds: gap {100 * gap:+.2f} pts of best val "
            f"at {frac:.2f} of the grid's trial-epochs",
            flush=True,
        )
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
