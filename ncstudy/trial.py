"""The Ray Tune trial function: one resolved trial -> its MLflow child run -> training.

Multi-worker trials build a Ray Train TorchTrainer (Train V2 pattern: the Tune function calls
`fit()`, `TuneReportCallback` forwards rank-0 metrics). Single-worker trials may run the same
worker loop directly in the Tune process (`resources.single_worker_fastpath`), which skips the
Train controller and worker-group start-up (see benchmarks/README.md for the cost).
"""

from __future__ import annotations

import traceback
from typing import Any

from ncstudy import tracking
from ncstudy.config import TrialSpec, config_error_in
from ncstudy.diskfull import full_disk_reason
from ncstudy.search_tags import search_tags
from ncstudy.targets import RunTarget, StudyTarget


def uses_train(trial: TrialSpec) -> bool:
    """Whether the trial runs on a Ray Train worker group (else: in the Tune process).
    UFM trials always run in the Tune process."""
    if trial.ufm is not None:
        return False
    r = trial.resources
    return r.workers_per_trial > 1 or not r.single_worker_fastpath


def run_trial(config: dict[str, Any], target: StudyTarget) -> None:
    """Tune function: find or create the child run, train, and end the run with its status.
    `config` is `{"trial": <TrialSpec>}` for grid and search trials alike; `target` (bound by
    `tune.with_parameters`) is where the study records."""
    trial = trial_of(config)
    mlf = tracking.client(target.tracking_uri)
    run_id = tracking.ensure_child_run(mlf, target.experiment_id, target.parent_run_id, trial)
    mlf.set_tag(run_id, "ncstudy.node_id", _node_id())
    for key, value in search_tags(trial.key).items():  # a search trial: its Optuna number
        mlf.set_tag(run_id, key, value)
    run = RunTarget(tracking_uri=target.tracking_uri, run_id=run_id)
    try:
        if uses_train(trial):
            final = _train_with_ray_train(trial, run, target.train_storage)
        else:
            final = _train_here(trial, run)
    except Exception as err:
        if full_disk_reason(err) is not None:
            raise  # not the trial's fault: the driver stops the study (diskfull.stop_callback)
        tracking.finish_run(mlf, run_id, "FAILED", reason=_reason(err))
        if config_error_in(err) is not None:
            return  # deterministic: a retry (FailureConfig) would fail the same way
        raise
    if final.get("status") == "failed":
        tracking.finish_run(mlf, run_id, "FAILED", reason=str(final.get("reason", "unknown")))
    else:
        tracking.finish_run(mlf, run_id, "FINISHED")


def trial_of(config: dict[str, Any]) -> TrialSpec:
    """The resolved trial of a Tune config (the grid's and the search's have one shape)."""
    return TrialSpec.model_validate(config["trial"])


def _train_here(trial: TrialSpec, run: RunTarget) -> dict[str, Any]:
    # torch, the data and model registries: only in the process that trains
    from ncstudy.context import TuneContext
    from ncstudy.train import train_loop
    from ncstudy.ufm.runner import ufm_loop

    ctx = TuneContext()
    loop = ufm_loop if trial.ufm is not None else train_loop
    loop(trial, ctx, run)
    return ctx.reports[-1] if ctx.reports else {}


def _train_with_ray_train(trial: TrialSpec, run: RunTarget, train_storage: str) -> dict[str, Any]:
    # ray.train and torch: only for trials that run on a Ray Train worker group
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ncstudy.train_entry import ray_train_entry  # light: the controller unpickles it

    r = trial.resources
    use_gpu = r.gpus_per_worker > 0
    per_worker: dict[str, float] = {"CPU": r.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = r.gpus_per_worker
    per_worker.update(r.custom)  # resources.custom: per worker, like GPUs
    # A stable Train run name per trial: a retried Tune trial resumes the same Train run from
    # its last checkpoint instead of starting over.
    trainer = TorchTrainer(
        ray_train_entry,
        train_loop_config={"trial": trial.model_dump(mode="json"), "run": run},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=r.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=trial.key,
            storage_path=train_storage,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=r.checkpoints_to_keep),
            callbacks=[TuneReportCallback()],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


def _node_id() -> str:
    """The Ray node this trial's Tune process runs on (its workers may be elsewhere)."""
    import ray  # already loaded in a Tune process; keeps the module light for the driver

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _reason(err: BaseException) -> str:
    """A short failure reason: the innermost exception's type and message."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = "".join(traceback.format_exception_only(type(inner), inner)).strip()
    return text[-2000:]
