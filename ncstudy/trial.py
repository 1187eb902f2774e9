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
from ncstudy.config import TrialSpec


def uses_train(trial: TrialSpec) -> bool:
    """Whether the trial runs on a Ray Train worker group (else: in the Tune process).
    UFM trials always run in the Tune process."""
    if trial.ufm is not None:
        return False
    r = trial.resources
    return r.workers_per_trial > 1 or not r.single_worker_fastpath


def run_trial(config: dict[str, Any]) -> None:
    """Tune function: find or create the child run, train, and end the run with its status."""
    trial = trial_of(config)
    env = config["env"]
    mlf = tracking.client(env["tracking_uri"])
    run_id = tracking.ensure_child_run(mlf, env["experiment_id"], env["parent_run_id"], trial)
    mlf.set_tag(run_id, "ncstudy.node_id", _node_id())
    run = {"tracking_uri": env["tracking_uri"], "run_id": run_id}
    try:
        final = (
            _train_with_ray_train(trial, run, env) if uses_train(trial) else _train_here(trial, run)
        )
    except Exception as err:
        tracking.finish_run(mlf, run_id, "FAILED", reason=_reason(err))
        raise
    if final.get("status") == "failed":
        tracking.finish_run(mlf, run_id, "FAILED", reason=str(final.get("reason", "unknown")))
    else:
        tracking.finish_run(mlf, run_id, "FINISHED")


def trial_of(config: dict[str, Any]) -> TrialSpec:
    """The resolved trial of a Tune config: a grid trial, or a point sampled by a search.
    A search may sample the same point twice (TPE does), so a search trial's key ends with its
    Optuna trial number (`-o3`): stable across --resume, unique within the search."""
    if "trial" in config:
        return TrialSpec.model_validate(config["trial"])
    from ncstudy.search import trial_from_point
    from ncstudy.config import StudySpec

    study = StudySpec.model_validate(config["study"])
    trial = trial_from_point(study, config["loss_index"], config["point"])
    return trial.model_copy(update={"key": f"{trial.key}-o{config['optuna_trial']}"})


def _train_here(trial: TrialSpec, run: dict[str, Any]) -> dict[str, Any]:
    from ncstudy.context import TuneContext
    from ncstudy.train import train_loop
    from ncstudy.ufm.runner import ufm_loop

    ctx = TuneContext()
    (ufm_loop if trial.ufm is not None else train_loop)(trial, ctx, run)
    return ctx.reports[-1] if ctx.reports else {}


def _train_with_ray_train(
    trial: TrialSpec, run: dict[str, Any], env: dict[str, Any]
) -> dict[str, Any]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from ncstudy.train import ray_train_entry

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
            storage_path=env["train_storage"],
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


def _node_id() -> str:
    """The Ray node this trial's Tune process runs on (its workers may be elsewhere)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _reason(err: BaseException) -> str:
    """A short failure reason: the innermost exception's type and message."""
    inner = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = "".join(traceback.format_exception_only(type(inner), inner)).strip()
    return text[-2000:]
