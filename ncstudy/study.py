"""The study driver: Ray Tune over the resolved trials, the MLflow parent run, resume, summary.

MLflow is the record of truth for what has run: a trial's child run is found by its trial key,
so a retried or resumed trial continues its own run and no run is ever duplicated.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ncstudy import tracking
from ncstudy.resume import MARKER, StudyError, check_can_start
from ncstudy.config import StudySpec, TrialSpec, expand
from ncstudy.trial import run_trial, uses_train

TRAIN_DRIVER_CPU = 0.05  # the Tune process of a multi-worker trial only waits on its workers


@dataclass(frozen=True)
class TrialRow:
    key: str
    status: str
    final_val_acc1: float | None
    best_val_acc1: float | None
    reason: str | None
    final_train_loss: float | None = None


@dataclass(frozen=True)
class StudyPaths:
    output_dir: Path
    study_dir: Path
    tracking_uri: str
    storage: str

    @classmethod
    def of(cls, study: StudySpec, storage_path: str | None = None) -> StudyPaths:
        output_dir = Path(study.output_dir).expanduser().resolve()
        storage = storage_path or os.environ.get("NCSTUDY_STORAGE_PATH")
        return cls(
            output_dir=output_dir,
            study_dir=study.study_dir,
            tracking_uri=tracking.default_tracking_uri(output_dir),
            storage=(storage.rstrip("/") + "/" + study.name) if storage else str(study.study_dir),
        )


def run_study(
    study: StudySpec,
    *,
    resume: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
) -> list[TrialRow]:
    """Run (or resume) every trial of the study; returns the summary rows. Everything that can
    refuse the study is checked before anything is written (StudyError)."""
    from ncstudy.services import check_services

    check_services(address, search=study.search is not None)  # Ray, MLflow, Optuna DB answer
    trials = None if study.search is not None else expand(study)
    paths = StudyPaths.of(study, storage_path)
    check_can_start(study, resume, paths, trials)
    _start_ray(address, ray_init_kwargs)
    concurrency = _check_cluster(study, paths, trials, existing_cluster=address is not None)

    study_yaml = yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
    mlf = tracking.client(paths.tracking_uri)
    local_store = paths.tracking_uri.startswith("sqlite:")
    artifacts = paths.output_dir / "mlartifacts" if local_store else None
    try:
        experiment_id = tracking.ensure_experiment(mlf, study.name, artifacts)
    except ValueError as err:  # deleted meanwhile
        raise StudyError(str(err)) from None
    parent_id = tracking.ensure_parent_run(mlf, experiment_id, study.name, study_yaml)
    env = {
        "tracking_uri": paths.tracking_uri,
        "experiment_id": experiment_id,
        "parent_run_id": parent_id,
        "train_storage": paths.storage + "/train",
    }

    interrupted = False
    exiting: SystemExit | None = None
    crash: BaseException | None = None
    tune_status: dict[str, str] = {}  # trial key -> Tune's final status of that trial
    try:
        if resume:  # only description / output_dir may differ (check_can_start)
            mlf.log_text(parent_id, study_yaml, "study.yaml")
        # the marker comes after the parent run: a marker always has its MLflow record
        paths.study_dir.mkdir(parents=True, exist_ok=True)
        (paths.study_dir / MARKER).write_text(study_yaml)
        if study.search is not None:
            interrupted = _run_search(study, env, paths, resume, tune_status, concurrency)
        else:
            interrupted = _run_grid(
                study, trials, env, paths, resume, mlf, experiment_id, tune_status, concurrency
            )
    except KeyboardInterrupt:
        interrupted = True
    except SystemExit as err:  # Ray's own SIGTERM handler (no CLI handler): close, then exit
        interrupted, exiting = True, err
    except BaseException as err:
        crash = err
        raise
    finally:
        keys = None if trials is None else {t.key for t in trials}
        why = None if crash is None else f"{type(crash).__name__}: {crash}"
        _close_open_runs(mlf, experiment_id, keys, interrupted, study.search, tune_status, why)
        rows = summarize(mlf, experiment_id, trials)
        if crash is not None:
            tracking.finish_run(mlf, parent_id, "FAILED", f"the study driver failed: {why}")
        else:
            tracking.finish_run(mlf, parent_id, "KILLED" if interrupted else "FINISHED")
    if exiting is not None:
        raise exiting
    if interrupted:
        raise KeyboardInterrupt
    from ncstudy.convergence_ref import log_steps_to_ref

    log_steps_to_ref(mlf, experiment_id, [r.key for r in rows if r.status == "FINISHED"])
    return rows


def _start_ray(address: str | None, ray_init_kwargs: dict[str, Any] | None) -> None:
    """Start (or connect to) Ray unless it runs already. ray.init replaces the caller's SIGTERM
    handler by an immediate exit; a handler the caller installed (the CLI's, which stops the
    study like Ctrl-C) is put back."""
    import signal
    import threading

    import ray

    if ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    # "local": always a fresh local Ray, never a cluster that happens to run on this machine
    ray.init(address=address or "local", **(ray_init_kwargs or _local_ray_kwargs(address)))
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _check_cluster(
    study: StudySpec, paths: StudyPaths, trials: list[TrialSpec] | None, existing_cluster: bool
) -> int:
    """How many trials run at once; refuses (StudyError) a study that cannot run on this Ray:
    no trial fits, results and runs on storage other nodes cannot reach, or a bad Optuna
    storage URL."""
    import ray

    from ncstudy.cluster import check_storage_path, check_tracking_uri

    probe = trials[0] if trials else _search_probe(study)
    if study.search is not None:
        from ncstudy.search import optuna_storage_url

        optuna_storage_url(paths.study_dir)  # a bad NCSTUDY_OPTUNA_STORAGE: StudyError now
    try:
        concurrency = _concurrency(study, probe, existing_cluster)
        nodes = sum(bool(n["Alive"]) for n in ray.nodes())
        check_storage_path(paths.storage, node_count=nodes, existing_cluster=existing_cluster)
        if existing_cluster:
            check_tracking_uri(paths.tracking_uri)
    except ValueError as err:
        raise StudyError(str(err)) from None
    if existing_cluster:
        print(f"up to {concurrency} trial(s) at once on the Ray cluster ({nodes} node(s) now)")
    return concurrency


def _search_probe(study: StudySpec) -> TrialSpec:
    """A trial of the study's search (every search trial has the study's resources)."""
    from ncstudy import search as s

    return s.trial_from_point(study, 0, {})


def _run_grid(
    study: StudySpec,
    trials: list[TrialSpec],
    env: dict[str, Any],
    paths: StudyPaths,
    resume: bool,
    mlf: Any,
    experiment_id: str,
    tune_status: dict[str, str],
    concurrency: int,
) -> bool:
    """Run the grid's trials that have not finished; True if the run was interrupted."""
    done = {row.key for row in summarize(mlf, experiment_id, trials) if row.status == "FINISHED"}
    todo = [t for t in trials if t.key not in done]
    if not todo:
        return False
    _fit(_tuner(study, todo, env, paths, resume, concurrency))
    return _was_interrupted(paths.storage + "/tune", len(todo), tune_status)


def _run_search(
    study: StudySpec,
    env: dict[str, Any],
    paths: StudyPaths,
    resume: bool,
    tune_status: dict[str, str],
    concurrency: int,
) -> bool:
    """One Optuna search per loss, in order; True if the run was interrupted."""
    from ncstudy import search as s

    assert study.search is not None
    # A trial that fails before its first evaluation (NaN loss) reports without the search
    # metric; Tune's strict check would then abort the whole search. The metric is validated
    # up front (spec: every epoch reports it), and ASHA, the median rule and our searcher all
    # skip results that lack it, so the check only turns one failed trial into a dead study.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    for index, loss in enumerate(study.losses):
        total = s.n_trials(study.search, loss)
        left = total - s.finished_optuna_trials(study, loss, paths.study_dir)
        tuner = _search_tuner(study, index, env, paths, resume, left, concurrency)
        if tuner is None:
            continue
        _fit(tuner)
        if _was_interrupted(f"{paths.storage}/tune-{loss.name}", left, tune_status):
            return True
    return False


def _fit(tuner: Any) -> None:
    """Run a Tuner with Tune's SIGINT handler only while it runs. Tune installs its handler
    (stop the run, save the experiment) at the start of `fit()` and restores the previous one
    only after a signal, so without this a later Ctrl-C or SIGTERM (the CLI forwards SIGTERM to
    the SIGINT handler) would reach a finished run's handler and be swallowed."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        tuner.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _was_interrupted(tune_path: str, expected: int, tune_status: dict[str, str]) -> bool:
    """Whether Tune's run at `tune_path` stopped early. Tune's SIGINT handler ends the run and
    returns normally, and the ResultGrid then calls every trial TERMINATED; the experiment
    state it saved is exact (an interrupted trial is saved PENDING, to be resumed). Records
    each trial's saved status in `tune_status`."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(tune_path).trials
    tune_status.update({_key(t): t.status for t in trials})
    return len(trials) < expected or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _local_ray_kwargs(address: str | None) -> dict[str, Any]:
    if address:
        return {}
    return {
        "num_cpus": os.cpu_count() or 1,
        "dashboard_host": "127.0.0.1",  # never listen beyond this machine by default
        "logging_level": "warning",
        "configure_logging": True,
    }


def _trial_resources(trial: TrialSpec) -> dict[str, float]:
    r = trial.resources
    if uses_train(trial):
        return {"cpu": TRAIN_DRIVER_CPU}
    res = {"cpu": r.cpus_per_worker}
    if r.gpus_per_worker:
        res["gpu"] = r.gpus_per_worker
    return {**res, **r.custom}  # the fast path's Tune process is the worker


def _concurrency(study: StudySpec, trial: TrialSpec, existing_cluster: bool = False) -> int:
    """How many trials run at once: what fits the Ray cluster, capped by the YAML's limit; on
    an existing (possibly autoscaling) cluster the YAML's limit as given (cluster.py)."""
    import ray

    from ncstudy.cluster import max_concurrent_trials

    r = trial.resources
    per_trial = {
        "workers_per_trial": r.workers_per_trial,
        "cpus_per_worker": r.cpus_per_worker,
        "gpus_per_worker": r.gpus_per_worker,
        "custom": r.custom,
        # the fast path's Tune process is the worker; a Train trial's Tune process only waits
        "driver_cpus": TRAIN_DRIVER_CPU if uses_train(trial) else 0.0,
    }
    return max_concurrent_trials(
        ray.cluster_resources(),
        per_trial,
        study.resources.max_concurrent_trials,
        existing_cluster=existing_cluster,
    )


def _progress_callback() -> Any:
    """A Tune callback that prints one line per evaluation and per ended trial."""
    from ray import tune

    class Progress(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):  # noqa: ANN001
            if "test/acc1" in result:  # an evaluation epoch
                val = result.get("val/acc1")  # absent without a validation split
                val_text = "n/a" if val is None else f"{100 * val:.2f} %"
                print(
                    f"  {_key(trial)}: epoch {result.get('epoch')}  "
                    f"loss {result['train/loss']:.4f}  val acc1 {val_text}",
                    flush=True,
                )

        def on_trial_complete(self, iteration, trials, trial, **info):  # noqa: ANN001
            print(f"  {_key(trial)}: done", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):  # noqa: ANN001
            print(f"  {_key(trial)}: error (see the summary)", flush=True)

    return Progress()


def _tuner(
    study: StudySpec,
    todo: list[TrialSpec],
    env: dict[str, Any],
    paths: StudyPaths,
    resume: bool,
    concurrency: int,
) -> Any:
    from ray import tune

    trainable = tune.with_resources(run_trial, _trial_resources(todo[0]))
    tune_path = paths.storage + "/tune"
    if resume and tune.Tuner.can_restore(tune_path):
        return tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    param_space = {
        "trial": tune.grid_search([t.model_dump(mode="json") for t in todo]),
        "env": env,
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            trial_name_creator=_key,
            trial_dirname_creator=_key,
            reuse_actors=True,  # ~1.5 s -> ~0.1 s of Tune start-up per trial (STACK.md)
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=paths.storage,
            failure_config=tune.FailureConfig(max_failures=study.resources.trial_max_failures),
            callbacks=[_progress_callback()],
            verbose=0,
        ),
    )


def _key(tune_trial: Any) -> str:
    """The ncstudy trial key of a Tune trial (grid trial, or sampled search point)."""
    config = tune_trial.config
    if "trial" in config:
        return config["trial"]["key"]
    from ncstudy.trial import trial_of

    return trial_of(config).key


def _search_tuner(
    study: StudySpec,
    loss_index: int,
    env: dict[str, Any],
    paths: StudyPaths,
    resume: bool,
    left: int,
    concurrency: int,
) -> Any:
    """The Tuner of one loss's Optuna search (restored when resuming), or None if it is done."""
    from ray import tune

    from ncstudy import search as s

    assert study.search is not None
    loss = study.losses[loss_index]
    probe = s.trial_from_point(study, loss_index, {})
    trainable = tune.with_resources(run_trial, _trial_resources(probe))
    tune_path = f"{paths.storage}/tune-{loss.name}"
    if resume and tune.Tuner.can_restore(tune_path):
        return tune.Tuner.restore(
            tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    if left <= 0:
        return None
    param_space = {
        "point": s.tune_space(study.search, loss),
        "study": study.model_dump(mode="json"),
        "loss_index": loss_index,
        "env": env,
    }
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=s.make_searcher(study, loss, paths.study_dir),
            scheduler=s.make_scheduler(study.search, study.train.epochs),
            num_samples=left,
            max_concurrent_trials=concurrency,
            trial_name_creator=_key,
            trial_dirname_creator=_key,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{loss.name}",
            storage_path=paths.storage,
            failure_config=tune.FailureConfig(max_failures=study.resources.trial_max_failures),
            callbacks=[_progress_callback()],
            verbose=0,
        ),
    )


def _close_open_runs(
    mlf: Any,
    experiment_id: str,
    keys: set[str] | None,
    killed: bool,
    search: Any,
    tune_status: dict[str, str],
    crash: str | None = None,
) -> None:
    """No child run stays RUNNING. A run left RUNNING whose Tune trial TERMINATED was stopped
    by the search's pruner (KILLED, with the epoch it stopped at); otherwise, after an
    interruption it is KILLED, after an error of the study driver (`crash`) FAILED with it,
    and after a normal end its process died (FAILED)."""
    for run in mlf.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        key = run.data.tags.get(tracking.TRIAL_KEY_TAG)
        if key is None or (keys is not None and key not in keys):
            continue
        pruned = search is not None and search.pruner != "none"
        if "final/test_acc1" in run.data.metrics:  # logged by every trial that reached its end
            # trained to the end and logged its summary; only the status update was cut short
            # (a scheduler stops a trial right after its last report at max_t)
            tracking.finish_run(mlf, run.info.run_id, "FINISHED")
        elif pruned and tune_status.get(key) == "TERMINATED":
            epoch = int(run.data.metrics.get("epoch", 0))
            tracking.finish_pruned(mlf, run.info.run_id, search.pruner, epoch)
        elif killed:
            tracking.finish_run(mlf, run.info.run_id, "KILLED", "study interrupted")
        elif crash is not None:
            tracking.finish_run(mlf, run.info.run_id, "FAILED", f"the study driver failed: {crash}")
        else:
            tracking.finish_run(mlf, run.info.run_id, "FAILED", "trial process ended early")


def summarize(mlf: Any, experiment_id: str, trials: list[TrialSpec] | None) -> list[TrialRow]:
    """One row per trial, read back from MLflow: in grid order, or (a search, `trials` None)
    every trial run in the order it started."""
    by_key = {}
    for run in mlf.search_runs([experiment_id], max_results=50000, order_by=["start_time ASC"]):
        key = run.data.tags.get(tracking.TRIAL_KEY_TAG)
        if key:
            by_key[key] = run
    keys = list(by_key) if trials is None else [t.key for t in trials]
    rows = []
    for key in keys:
        run = by_key.get(key)
        if run is None:
            rows.append(TrialRow(key, "NOT STARTED", None, None, None))
            continue
        m = run.data.metrics
        rows.append(
            TrialRow(
                key,
                run.info.status,
                m.get("final/val_acc1"),
                m.get("best/val_acc1"),
                run.data.tags.get(tracking.REASON_TAG),
                m.get("train/loss"),
            )
        )
    return rows


def format_summary(rows: list[TrialRow]) -> str:
    """The end-of-study table: key, status, final and best validation accuracy, and the last
    training loss (where a temperature shows even when accuracies tie)."""

    def pct(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"

    def num(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.4f}"

    header = ("trial", "status", "final val acc1 %", "best val acc1 %", "final train loss")
    body = [
        (r.key, r.status, pct(r.final_val_acc1), pct(r.best_val_acc1), num(r.final_train_loss))
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in rows:
        if r.reason and r.status != "FINISHED":
            lines.append(f"{r.key}: {r.status}: {r.reason.splitlines()[-1]}")
    return "\n".join(lines)


def mlflow_ui_command(paths: StudyPaths) -> str:
    """The exact command that opens the MLflow UI on this study's store (localhost only)."""
    if paths.tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {paths.tracking_uri} (MLflow server)"
