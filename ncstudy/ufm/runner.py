"""The UFM trial loop: build the problem from a TrialSpec, optimise, report every
`evaluation.every` iterations (NC metrics under `nc/`, loss under `train/loss`), log to MLflow.

It follows `ncstudy.train.train_loop`'s contract (same report/log pattern, checkpoints, final
`status`), with iterations in place of epochs (`epoch` = iterations done). Every sample is a
training sample, so `train/acc1` is the UFM's training accuracy; `val/acc1` (and `final/`,
`best/val_acc1`) repeat it so the study's summary table has a number.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
import torch.nn.functional as F

from ncstudy.config import TrialSpec
from ncstudy.context import WorkerContext
from ncstudy.losses import build_loss
from ncstudy.metrics import NCAccumulator, compute_nc_metrics
from ncstudy.metrics.convergence import UFM_CLOCK_METRICS, clock_summary, record_history
from ncstudy.runlog import RunLogger, tune_view
from ncstudy.targets import RunTarget
from ncstudy.ufm import theory
from ncstudy.ufm.geometry import log_geometry
from ncstudy.ufm.problem import UFMProblem, balanced_labels
from ncstudy.ufm.regularized import RegularizedUFM
from ncstudy.ufm.spherical import SphericalUFM

# What Tune sees of a report (runlog.tune_view): scalars and the status, no NC block.
TUNE_KEYS = ("epoch", "train/", "val/", "best/", "final/", "ufm/", "status", "reason")


def build_problem(trial: TrialSpec) -> UFMProblem:
    """The UFM problem of a trial: labels, free features and the production loss module."""
    u = trial.ufm
    if u is None:
        raise ValueError(f"trial {trial.key}: not a UFM trial (no `ufm` section)")
    criterion = build_loss(
        trial.loss, trial.loss_params, feature_dim=u.d, num_classes=u.K, seed=trial.seed
    )
    labels = balanced_labels(u.K, u.n_per_class)
    common = {"seed": trial.seed, "step": u.step, "memory": u.memory}
    if u.variant == "spherical":
        return SphericalUFM(criterion, labels, u.d, log_loss=u.log_loss, **common)
    return RegularizedUFM(
        criterion,
        labels,
        u.d,
        lambda_w=u.lambda_w,
        lambda_h=u.lambda_h,
        lambda_b=u.lambda_b,
        init_scale=u.init_scale,
        **common,
    )


def theory_value(trial: TrialSpec) -> float | None:
    """The predicted minimum of the loss, where theory gives one (spherical, K <= d+1)."""
    u = trial.ufm
    if u is None or u.variant != "spherical" or u.d + 1 < u.K or trial.temperature is None:
        return None
    tau = trial.temperature
    if trial.loss == "normface":
        return theory.normface_bound(u.K, tau)
    if trial.loss == "ntce":
        return theory.ntce_etf_value(u.K, u.n_per_class, tau)
    if trial.loss == "nonl":
        return theory.nonl_etf_value(u.K, u.n_per_class, tau)
    return None


def regularized_optimum(trial: TrialSpec) -> float | None:
    """The predicted minimum of the regularised objective (Zhou et al. 2022, Theorem 1: the
    simplex ETF with h = sqrt(lambda_W / (lambda_H n)) w, for K < d), from the one-dimensional
    reduced problem of ufm/theory.py; None where the theorem does not apply."""
    u = trial.ufm
    if u is None or u.variant != "regularized" or u.d <= u.K:
        return None
    if trial.loss not in theory.REGULARIZED_LOSSES:
        return None
    _, objective = theory.regularized_optimum(
        trial.loss,
        num_classes=u.K,
        n_per_class=u.n_per_class,
        lambda_w=u.lambda_w,
        lambda_h=u.lambda_h,
        lambda_b=u.lambda_b,
        params=dict(trial.loss_params),
    )
    return objective


def objective_gap(metrics: dict[str, Any], optimum: float | None) -> dict[str, float]:
    """`ufm/theory_objective` and `ufm/objective_gap` (reached - predicted) of a round."""
    if optimum is None:
        return {}
    return {
        "ufm/theory_objective": optimum,
        "ufm/objective_gap": metrics["train/objective"] - optimum,
    }


def nc_metrics(problem: UFMProblem, num_classes: int, max_intra_classes: int) -> dict[str, float]:
    """NC metrics of the free features with the loss's own classifier (and its predictions)."""
    crit, h, y = problem.criterion, problem.features.detach(), problem.labels
    set_prototypes(problem, num_classes)
    acc = NCAccumulator(num_classes, h.shape[1], max_intra_classes=max_intra_classes)
    acc.update(h, y, problem.predictions())
    weights = crit.classifier_weights()
    return compute_nc_metrics(acc.statistics(), None if weights is None else weights.double())


def set_prototypes(problem: UFMProblem, num_classes: int) -> None:
    """Losses that predict with class-mean prototypes get the exact means of the features."""
    crit = problem.criterion
    if crit.needs_class_means:
        z = F.normalize(problem.features.detach(), dim=1)
        onehot = F.one_hot(problem.labels, num_classes).to(z.dtype)
        crit.set_class_means(F.normalize(onehot.T @ z, dim=1))


def ufm_loop(trial: TrialSpec, ctx: WorkerContext, run: RunTarget | None = None) -> None:
    """Optimise one UFM trial, reporting every `evaluation.every` iterations; `run` is the
    trial's MLflow run (nothing is logged without it)."""
    threads = max(1, int(trial.resources.cpus_per_worker))
    torch.set_num_threads(int(os.environ.get("NCSTUDY_THREADS", threads)))
    u = trial.ufm
    assert u is not None  # build_problem raises a clear error first
    problem = build_problem(trial)
    history: dict[str, list[tuple[int, float]]] = {}
    best = -1.0
    state = ctx.load_state()
    if state is not None:
        problem.load_state(state["ufm"])
        history, best = state["history"], state["best_val"]
    log = RunLogger(run, ctx.is_main)
    if state is None and trial.evaluation.nc_metrics:
        # Step 0 of the convergence clock: closeness to a target of 0 is measured against the
        # value at initialisation, so the metrics are taken once before the first iteration.
        init = {f"nc/{k}": v for k, v in _nc(problem, trial).items()}
        record_history(history, init, 0, UFM_CLOCK_METRICS)
        log.log(init, 0)
    bound, optimum = theory_value(trial), regularized_optimum(trial)
    while problem.iteration < u.iterations:
        metrics = ufm_round(problem, trial, bound)
        metrics.update(objective_gap(metrics, optimum))  # regularised: Zhou et al.'s optimum
        it, loss = metrics["epoch"], metrics["train/loss"]
        if not math.isfinite(loss):
            metrics.update(status="failed", reason=f"UFM loss is {loss} at iteration {it}")
            log.log(metrics, it)
            ctx.report(tune_view(metrics, TUNE_KEYS))
            return
        if trial.evaluation.nc_metrics:
            metrics.update({f"nc/{k}": v for k, v in _nc(problem, trial).items()})
            record_history(history, metrics, it, UFM_CLOCK_METRICS)
        best = max(best, metrics["train/acc1"])
        metrics["best/val_acc1"] = best
        if it >= u.iterations:
            metrics.update(_final(metrics, history, trial))
            log_geometry(log, problem)  # d <= 3: the 2-D/3-D picture of the final configuration
        log.log(metrics, it)
        ctx.report(tune_view(metrics, TUNE_KEYS), state=_checkpoint(problem, history, best, trial))


def ufm_round(problem: UFMProblem, trial: TrialSpec, bound: float | None) -> dict[str, Any]:
    """Run `evaluation.every` iterations (fewer at the end); the round's metrics, without the NC
    block. `epoch` is the number of iterations done."""
    u, every = trial.ufm, trial.evaluation.every
    assert u is not None
    started = time.perf_counter()
    result = problem.run(min(every, u.iterations - problem.iteration))
    set_prototypes(problem, u.K)
    loss = float(problem.loss().detach())
    acc1 = problem.accuracy()
    metrics: dict[str, Any] = {
        "epoch": problem.iteration,
        "train/loss": loss,
        "train/objective": result.objective,
        "train/acc1": acc1,
        "val/acc1": acc1,
        "ufm/grad_norm": result.grad_norm,
        "ufm/step_size": problem.step_size,
        "ufm/converged": float(problem.converged),
        "perf/iteration_seconds": (time.perf_counter() - started) / max(every, 1),
    }
    if bound is not None:
        metrics["ufm/theory_loss"] = bound
        metrics["ufm/loss_gap"] = loss - bound
    return metrics


def _nc(problem: UFMProblem, trial: TrialSpec) -> dict[str, float]:
    assert trial.ufm is not None
    return nc_metrics(problem, trial.ufm.K, trial.evaluation.max_intra_classes)


def _final(
    metrics: dict[str, Any], history: dict[str, list[tuple[int, float]]], trial: TrialSpec
) -> dict[str, Any]:
    """The last report's extras: final values, status and the convergence clock."""
    assert trial.ufm is not None
    out: dict[str, Any] = {
        "final/val_acc1": metrics["train/acc1"],
        "final/train_loss": metrics["train/loss"],
        "status": "finished",
    }
    out.update(clock_summary(history, trial.ufm.K, trial.evaluation.convergence.ewma_alpha))
    return out


def _checkpoint(
    problem: UFMProblem, history: dict[str, list[tuple[int, float]]], best: float, trial: TrialSpec
) -> dict[str, Any]:
    """The self-describing checkpoint after a round."""
    return {
        "ufm": problem.state(),
        "history": history,
        "best_val": best,
        "trial": trial.model_dump(mode="json"),
    }
