"""Optuna with pruning against the full grid, on a task where the grid is affordable: NormFace on
the digits, temperature x learning rate. Prints each method's best validation accuracy (and the
test accuracy of the configuration it picks) and its compute in trial-epochs (epochs actually
trained, summed over trials), as a fraction of the grid's.

    python benchmarks/bench_search.py [--epochs 12] [--n-trials 12] [--seeds 3]
"""

from __future__ import annotations

import argparse
import tempfile

from mlflow.tracking import MlflowClient

from ncstudy.spec import parse_study
from ncstudy.study import run_study

TEMPERATURES = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
LRS = [0.05, 0.2]


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


def outcome(out: str, name: str) -> tuple[float, float, int, int]:
    """(best val acc, test acc of that run, trial-epochs, trials) from MLflow."""
    mlf = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = mlf.get_experiment_by_name(name)
    runs = [r for r in mlf.search_runs([exp.experiment_id]) if "ncstudy.trial_key" in r.data.tags]
    best = max(runs, key=lambda r: r.data.metrics.get("best/val_acc1", 0.0))
    test = mlf.get_metric_history(best.info.run_id, "test/acc1")
    epochs = sum(int(r.data.metrics.get("epoch", 0)) for r in runs)
    return (
        best.data.metrics["best/val_acc1"],
        test[-1].value if test else float("nan"),
        epochs,
        len(runs),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--n-trials", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=3, help="Optuna sampler seeds to average")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="ncstudy-search-")

    run_study(parse_study(base("grid", out, args.epochs)))
    g_val, g_test, g_epochs, g_trials = outcome(out, "grid")
    print(
        f"grid        {g_trials:3d} trials  best val {100 * g_val:6.2f} %  "
        f"(test {100 * g_test:6.2f} %)  {g_epochs:5d} trial-epochs  1.00"
    )
    for pruner in ("asha", "none"):
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
            val, test, epochs, trials = outcome(out, name)
            print(
                f"tpe+{pruner:<5} s{seed} {trials:3d} trials  best val {100 * val:6.2f} %  "
                f"(test {100 * test:6.2f} %)  {epochs:5d} trial-epochs  "
                f"{epochs / g_epochs:.2f}  gap {100 * (g_val - val):+.2f} pts"
            )


if __name__ == "__main__":
    main()
