"""Optuna + pruning against the full grid over many seeds, by replaying recorded learning curves.

A trial is seeded by its configuration, not by the search that runs it: NormFace at (tau, lr)
trains to the same validation curve whether the grid or a search starts it. So the grid is
trained once, for real (`run_study`, curves read back from MLflow), and each search is then
replayed in virtual time: two trials at a time, one time unit per epoch, each reporting the
recorded curve of the point it was given; ncstudy's own searcher (`PruningOptunaSearch`: pruned
trials reach Optuna as PRUNED), sampler (`make_sampler`) and Ray's ASHA from `make_scheduler`
make every decision, called as Tune's controller calls them. A search costs milliseconds, so
ten or more seeds per method are affordable; `--verify N` runs N searches for real (Ray Tune,
training) and checks that every trial they train reproduces the recorded curve exactly (the
premise), printing each real outcome. The median rule is left out: while it lacks samples it
pauses trials for pending ones, which the replay does not model.

The task has a validation split of ~650 images (one image is 0.15 points of accuracy).
Outcome per search, as in `bench_search.py`: the best validation accuracy (`best/val_acc1`)
among its FINISHED trials, that trial's test accuracy, and its compute in trial-epochs (epochs
trained, pruned trials included) as a fraction of the grid's.

    python benchmarks/bench_search_replay.py [--epochs 12] [--seeds 10] [--verify 0]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ncstudy.config import parse_study
from ncstudy.search import PruningOptunaSearch, make_sampler, make_scheduler, tune_space
from ncstudy.study import run_study

TEMPERATURES = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
LRS = [0.05, 0.1, 0.2]
LOSSES = ["normface", "ntce"]  # two tasks: the same grid, two losses
# (label, sampler, pruner, grace epochs, trials per search, TPE's random start); None: ncstudy's
# default (grace: a third of the epochs; start: a quarter of the trials, 3 to 10). ASHA halves
# at grace x 2^k epochs: at 12 epochs, grace 4 judges at epochs 4 and 8.
METHODS = [
    ("tpe+asha g1 n16 s10", "tpe", "asha", 1, 16, 10),
    ("tpe+asha g2 n16", "tpe", "asha", 2, 16, None),
    ("tpe+asha g3 n12", "tpe", "asha", 3, 12, None),
    ("tpe+asha g3 n16", "tpe", "asha", 3, 16, None),
    ("tpe+asha g6 n12", "tpe", "asha", 6, 12, None),
    ("tpe+asha n12 s10", "tpe", "asha", None, 12, 10),
    ("tpe+asha default n12", "tpe", "asha", None, 12, None),
    ("tpe+asha default n14", "tpe", "asha", None, 14, None),
    ("random+asha n12", "random", "asha", None, 12, None),
    ("tpe+none n9", "tpe", "none", None, 9, None),
    ("random+none n9", "random", "none", None, 9, None),
]


@dataclass(frozen=True)
class Curve:
    val: list[float]  # val/acc1 at epochs 1..E
    test: float  # final/test_acc1


@dataclass(frozen=True)
class Outcome:
    best_val: float
    test: float
    trial_epochs: int
    finished: int
    pruned: int


def study_dict(name: str, out: str, epochs: int, loss: str = "normface") -> dict[str, Any]:
    return {
        "name": name,
        "output_dir": out,
        "dataset": {"name": "digits", "image_size": 12, "val_fraction": 0.45},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": epochs, "lr": 0.1, "base_batch_size": 64},
        "losses": [{"name": loss}],
        "grid": {"temperature": TEMPERATURES, "batch_size": [64], "axes": {"train.lr": LRS}},
        "resources": {"cpus_per_worker": 1},
        "evaluation": {"every": epochs, "nc_metrics": False, "system_metrics": False},
    }


def search_dict(
    name: str, out: str, epochs: int, method: tuple, seed: int, loss: str = "normface"
) -> dict[str, Any]:
    _, sampler, pruner, grace, n, startup = method
    spec = study_dict(name, out, epochs, loss)
    spec["search"] = {
        "n_trials": n,
        "sampler": sampler,
        "seed": seed,
        "pruner": pruner,
        "space": {"temperature": TEMPERATURES, "train.lr": LRS},
    }
    if grace is not None:
        spec["search"]["grace_epochs"] = grace
    if startup is not None and sampler == "tpe":
        spec["search"]["startup_trials"] = startup
    return spec


def read_curves(out: str, name: str) -> dict[str, Curve]:
    """Each trial's validation curve and final test accuracy, from MLflow (grid key)."""
    mlf = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = mlf.get_experiment_by_name(name)
    curves: dict[str, Curve] = {}
    if exp is None:  # not trained yet
        return curves
    for run in mlf.search_runs([exp.experiment_id]):
        key = run.data.tags.get("ncstudy.trial_key")
        if key is None or run.info.status != "FINISHED":
            continue
        hist = sorted(mlf.get_metric_history(run.info.run_id, "val/acc1"), key=lambda m: m.step)
        curves[key.split("-o")[0]] = Curve(
            [m.value for m in hist], run.data.metrics.get("final/test_acc1", float("nan"))
        )
    return curves


def grid_outcome(curves: dict[str, Curve]) -> Outcome:
    best = max(curves.values(), key=lambda c: max(c.val))
    epochs = sum(len(c.val) for c in curves.values())
    return Outcome(max(best.val), best.test, epochs, len(curves), 0)


@dataclass
class Running:
    trial: Any  # what the scheduler sees (its trial_id)
    curve: Curve
    epoch: int = 0
    best: float = 0.0


def replay_search(spec: dict[str, Any], curves: dict[str, Curve], slots: int) -> Outcome:
    """One search over the recorded curves, in virtual time: `slots` trials at a time, each
    epoch one time unit, trials started in order; ncstudy's searcher, sampler and scheduler
    make every decision, called as Tune's controller calls them."""
    study = parse_study(spec)
    search, loss = study.search, study.losses[0]
    searcher = PruningOptunaSearch(
        space=optuna_space(search, loss),
        metric=search.metric,
        mode=search.mode,
        sampler=make_sampler(search, loss),
        study=study,
        loss_index=0,
        pruner=search.pruner,
    )
    scheduler = make_scheduler(search, study.train.epochs) or FIFOScheduler()
    running: dict[str, Running] = {}
    ended: list[dict[str, Any]] = []
    started = 0
    while started < search.n_trials or running:
        while len(running) < slots and started < search.n_trials:
            tid = f"{started:05d}"
            config = searcher.suggest(tid)
            key = config["trial"]["key"].rsplit("-o", 1)[0]
            running[tid] = Running(SimpleNamespace(trial_id=tid), curves[key])
            scheduler.on_trial_add(None, running[tid].trial)
            started += 1
        for tid in sorted(running):
            if step(tid, running[tid], searcher, scheduler, ended):
                del running[tid]
    return outcome(ended)


def step(tid: str, r: Running, searcher: Any, scheduler: Any, ended: list) -> bool:
    """One epoch of a running trial: its report, the scheduler's decision; True if it ended.
    The last epoch reports with status `finished` (train.finish), as the real trial does."""
    r.epoch += 1
    value = r.curve.val[r.epoch - 1]
    r.best = max(r.best, value)
    result = {"epoch": r.epoch, "val/acc1": value, "best/val_acc1": r.best}
    last = r.epoch == len(r.curve.val)
    if last:
        result.update({"status": "finished", "final/test_acc1": r.curve.test})
    decision = scheduler.on_trial_result(None, r.trial, result)
    if not last and decision != TrialScheduler.STOP:
        searcher.on_trial_result(tid, result)
        return False
    scheduler.on_trial_complete(None, r.trial, result)
    searcher.on_trial_complete(tid, result)
    ended.append(result)
    return True


def outcome(ended: list[dict[str, Any]]) -> Outcome:
    finished = [m for m in ended if m.get("status") == "finished"]
    best = max(finished, key=lambda m: m["best/val_acc1"])
    return Outcome(
        best["best/val_acc1"],
        best["final/test_acc1"],
        sum(int(m["epoch"]) for m in ended),
        len(finished),
        len(ended) - len(finished),
    )


def optuna_space(search: Any, loss: Any) -> dict[str, Any]:
    """The space as ncstudy's make_searcher gives it to OptunaSearch."""
    from ray.tune.search.optuna import OptunaSearch  # ray's optuna glue: only for this helper

    return OptunaSearch.convert_search_space({"point": tune_space(search, loss)})


def line(label: str, o: Outcome, grid: Outcome) -> str:
    return (
        f"{label:<20} {o.finished:3d} fin {o.pruned:3d} pruned  best val {100 * o.best_val:6.2f} %"
        f" (test {100 * o.test:6.2f} %)  {o.trial_epochs:4d} trial-epochs "
        f"{o.trial_epochs / grid.trial_epochs:5.2f}  gap {100 * (grid.best_val - o.best_val):+.2f}"
    )


def summary(label: str, outs: list[Outcome], grid: Outcome) -> str:
    gaps = [100 * (grid.best_val - o.best_val) for o in outs]
    fracs = [o.trial_epochs / grid.trial_epochs for o in outs]
    hits = sum(g <= 0.0 for g in gaps)
    within = sum(g <= 0.5 for g in gaps)
    return (
        f"{label:<20} gap mean {statistics.mean(gaps):5.2f} sd {statistics.pstdev(gaps):5.2f} "
        f"max {max(gaps):5.2f} pts | found best {hits:2d}/{len(outs)}, within 0.5 pts "
        f"{within:2d}/{len(outs)} | trial-epochs {statistics.mean(fracs):.2f} "
        f"({min(fracs):.2f}-{max(fracs):.2f}) of the grid"
    )


def verify(
    out: str, epochs: int, curves: dict[str, Curve], runs: int, grid: Outcome, loss: str
) -> None:
    """Run searches for real; every trial they train must reproduce the recorded curve."""
    method = next(m for m in METHODS if m[0] == "tpe+asha default n12")
    for seed in range(runs):
        name = f"verify-{loss}-{seed}"
        run_study(parse_study(search_dict(name, out, epochs, method, seed, loss)))
        real = read_partial_curves(out, name)
        for key, vals in real:
            want = curves[key.rsplit("-o", 1)[0]].val[: len(vals)]
            assert vals == want, f"{key}: search trial curve {vals} != grid curve {want}"
        print(f"verify seed {seed}: {len(real)} trials reproduce the grid's curves exactly")
        print(line(f"  real {method[0]}", real_outcome(out, name), grid), flush=True)


def read_partial_curves(out: str, name: str) -> list[tuple[str, list[float]]]:
    """(search trial key, its val/acc1 history) of every trial the search started."""
    mlf = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = mlf.get_experiment_by_name(name)
    got = []
    for run in mlf.search_runs([exp.experiment_id]):
        key = run.data.tags.get("ncstudy.trial_key")
        if key is not None:
            hist = mlf.get_metric_history(run.info.run_id, "val/acc1")
            got.append((key, [m.value for m in sorted(hist, key=lambda m: m.step)]))
    return got


def real_outcome(out: str, name: str) -> Outcome:
    mlf = MlflowClient(f"sqlite:///{out}/mlflow.db")
    exp = mlf.get_experiment_by_name(name)
    runs = [r for r in mlf.search_runs([exp.experiment_id]) if "ncstudy.trial_key" in r.data.tags]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    best = max(finished, key=lambda r: r.data.metrics["best/val_acc1"])
    return Outcome(
        best.data.metrics["best/val_acc1"],
        best.data.metrics["final/test_acc1"],
        sum(int(r.data.metrics.get("epoch", 0)) for r in runs),
        len(finished),
        len(runs) - len(finished),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=10, help="Optuna seeds per method")
    parser.add_argument("--concurrency", type=int, default=2, help="trials at a time")
    parser.add_argument("--verify", type=int, default=0, help="real searches to check")
    parser.add_argument("--out", default=None, help="keep the grids' store here (reused)")
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="ncstudy-replay-")
    started = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for loss in args.losses:
        curves = train_grid(out, args.epochs, loss)
        grid = grid_outcome(curves)
        print(f"{loss}: {len(curves)} configurations, {time.perf_counter() - started:.0f} s")
        print(line("grid", grid, grid), flush=True)
        for method in METHODS:
            outs = []
            for seed in range(args.seeds):
                spec = search_dict(f"replay-{seed}", out, args.epochs, method, seed, loss)
                outs.append(replay_search(spec, curves, args.concurrency))
            print(summary(method[0], outs, grid), flush=True)
        if args.verify:
            verify(out, args.epochs, curves, args.verify, grid, loss)
    print(f"total {time.perf_counter() - started:.0f} s")


def train_grid(out: str, epochs: int, loss: str) -> dict[str, Curve]:
    """The grid's curves from the store at `out`, training the grid first if it is not there."""
    name = f"grid-{loss}"
    curves = read_curves(out, name)
    if len(curves) != len(TEMPERATURES) * len(LRS):
        run_study(parse_study(study_dict(name, out, epochs, loss)))
        curves = read_curves(out, name)
    return curves


if __name__ == "__main__":
    main()
