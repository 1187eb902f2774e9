"""Ray Tune's side of a study: one place builds the Tuner of the grid and of each loss's search
(restored from Tune's saved state on --resume), with the trials' resources, how many run at
once, their names and the progress lines.

Every trial function receives one config shape, `{"trial": <TrialSpec as JSON>}`: the grid puts
its resolved trials in the param space, a search's searcher resolves each sampled point before
Tune sees it (search.py). Where the study records (StudyTarget) is bound to the trial function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ncstudy import progress
from ncstudy.cluster import max_concurrent_trials
from ncstudy.config import StudySpec, TrialSpec
from ncstudy.diskfull import Reserve, stop_callback
from ncstudy.paths import StudyPaths
from ncstudy.targets import StudyTarget
from ncstudy.trial import run_trial, uses_train

TRAIN_DRIVER_CPU = 0.05  # the Tune process of a multi-worker trial only waits on its workers

# what a new Tuner gets: its param space and its TuneConfig options; None: nothing left to run
NewTuner = tuple[dict[str, Any], dict[str, Any]] | None


@dataclass(frozen=True)
class TunerPlan:
    """What differs between the grid's Tuner and a search's: its experiment name (a folder
    under the study's storage), a trial that carries the trials' resources, and how to make it
    new (called only when Tune has no saved state to restore)."""

    name: str
    probe: TrialSpec
    new: Callable[[], NewTuner]


def build_tuner(
    plan: TunerPlan,
    study: StudySpec,
    paths: StudyPaths,
    target: StudyTarget,
    resume: bool,
    concurrency: int,
    verbose: bool = False,
) -> Any:
    """The plan's Tuner: restored from Tune's saved state when resuming, else new (None when
    the plan has nothing left to run)."""
    from ray import tune  # ray: only when a study runs

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, target=target), trial_resources(plan.probe)
    )
    tune_path = f"{paths.storage}/{plan.name}"
    if resume and tune.Tuner.can_restore(tune_path):
        return tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    new = plan.new()
    if new is None:
        return None
    param_space, options = new
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=trial_key,
            trial_dirname_creator=trial_key,
            **options,
        ),
        run_config=tune.RunConfig(
            name=plan.name,
            storage_path=paths.storage,
            failure_config=tune.FailureConfig(max_failures=study.resources.trial_max_failures),
            # the newest N of each trial (without it Tune keeps every checkpoint it is given)
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=study.resources.checkpoints_to_keep
            ),
            callbacks=[_progress_callback(), stop_callback(Reserve(paths.study_dir))],
            verbose=None if verbose else 0,  # None: Tune's default output
        ),
    )


def grid_plan(todo: list[TrialSpec]) -> TunerPlan:
    """The grid's Tuner: one Tune trial per resolved trial still to run."""

    def new() -> NewTuner:
        from ray import tune  # ray: only when a study runs

        space = {"trial": tune.grid_search([t.model_dump(mode="json") for t in todo])}
        return space, {"reuse_actors": True}  # ~1.5 s -> ~0.1 s of start-up per trial (STACK.md)

    return TunerPlan("tune", todo[0], new)


def search_plan(
    study: StudySpec, loss_index: int, paths: StudyPaths, target: StudyTarget, left: int
) -> TunerPlan:
    """One loss's Optuna search: `left` more trials sampled by its searcher, each resolved to
    its trial before Tune sees it; nothing to run when none is left."""
    from ncstudy import search as s  # optuna: only for searches

    assert study.search is not None
    loss = study.losses[loss_index]

    def new() -> NewTuner:
        if left <= 0:
            return None
        options = {
            "search_alg": s.make_searcher(study, loss_index, paths.study_dir, target),
            "scheduler": s.make_scheduler(study.search, study.train.epochs),
            "num_samples": left,
        }
        return {}, options

    return TunerPlan(f"tune-{loss.name}", s.trial_from_point(study, loss_index, {}), new)


def trial_key(tune_trial: Any) -> str:
    """The ncstudy trial key of a Tune trial (names its Tune trial and folder)."""
    return tune_trial.config["trial"]["key"]


def trial_resources(trial: TrialSpec) -> dict[str, float]:
    """What one Tune trial reserves: its worker's CPUs/GPUs in the fast path, else a sliver for
    the Tune process that waits on its Ray Train workers."""
    r = trial.resources
    if uses_train(trial):
        return {"cpu": TRAIN_DRIVER_CPU}
    res = {"cpu": r.cpus_per_worker}
    if r.gpus_per_worker:
        res["gpu"] = r.gpus_per_worker
    return {**res, **r.custom}  # the fast path's Tune process is the worker


def concurrency(study: StudySpec, trial: TrialSpec, existing_cluster: bool = False) -> int:
    """How many trials run at once: what fits the Ray cluster, capped by the YAML's limit; on
    an existing (possibly autoscaling) cluster the YAML's limit as given (cluster.py)."""
    import ray  # ray: only when a study runs

    return max_concurrent_trials(
        ray.cluster_resources(),
        per_trial_resources(trial),
        study.resources.max_concurrent_trials,
        existing_cluster=existing_cluster,
    )


def local_concurrency(study: StudySpec, trial: TrialSpec) -> int:
    """`concurrency` for the local Ray this machine would start, without starting it: all its
    CPUs (local_ray.py) and the GPUs torch sees. ValueError when no trial fits."""
    import torch  # torch: only for a local study's pre-flight, not to validate a study

    machine = {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}
    return max_concurrent_trials(
        machine, per_trial_resources(trial), study.resources.max_concurrent_trials
    )


def per_trial_resources(trial: TrialSpec) -> dict[str, Any]:
    """What one trial holds, as cluster.trial_demand reads it."""
    r = trial.resources
    return {
        "workers_per_trial": r.workers_per_trial,
        "cpus_per_worker": r.cpus_per_worker,
        "gpus_per_worker": r.gpus_per_worker,
        "custom": r.custom,
        # the fast path's Tune process is the worker; a Train trial's Tune process only waits
        "driver_cpus": TRAIN_DRIVER_CPU if uses_train(trial) else 0.0,
    }


def latest_text(result: dict[str, Any]) -> str:
    """A trial's latest metrics in one phrase: training loss and validation accuracy."""
    loss = result.get("train/loss")
    text = "" if loss is None else f"loss {loss:.4f}"
    val = result.get("val/acc1")  # absent without a validation split
    return text if val is None else f"{text}  val acc1 {100 * val:.2f} %".strip()


def _progress_callback() -> Any:
    """A Tune callback that feeds the study's display (progress.py): trial starts, results and
    ends. It holds no display itself: a copy restored from Tune's saved state (--resume) feeds
    the display of the run that restored it."""
    from ray import tune  # ray: only when a study runs

    class Progress(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):  # noqa: ANN001
            if (shown := progress.current()) is not None:
                shown.started(trial_key(trial), trial.config["trial"])

        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            if (shown := progress.current()) is not None:
                evaluated = "test/acc1" in result  # an evaluation epoch
                epoch = int(result.get("epoch") or 0)
                shown.result(trial_key(trial), epoch, latest_text(result), evaluated)

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            if (shown := progress.current()) is not None:  # a NaN loss ends with status failed
                failed = (trial.last_result or {}).get("status") == "failed"
                shown.ended(trial_key(trial), failed)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            if (shown := progress.current()) is not None:
                shown.ended(trial_key(trial), failed=True)

    return Progress()
