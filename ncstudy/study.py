"""The study driver: the MLflow parent run, Ray Tune over the grid or each loss's search, and
how every run ends (interrupt, crash, normal end). Tuners are built in tuning.py, the summary
in summary.py, where a study writes in paths.py, what --resume accepts in resume.py.

MLflow is the record of truth for what has run: a trial's child run is found by its trial key,
so a retried or resumed trial continues its own run and no run is ever duplicated.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

from ncstudy import progress, tracking
from ncstudy.cluster import check_storage_path, check_tracking_uri
from ncstudy.config import StudySpec, TrialSpec, expand
from ncstudy.diskfull import STOPPED, DiskFull, Reserve, full_disk_reason
from ncstudy.diskspace import check_free_space
from ncstudy.ownership import SETTLE_S, Lease, LocalLock
from ncstudy.paths import MARKER, StudyError, StudyPaths
from ncstudy.resume import check_can_start
from ncstudy.services import check_services
from ncstudy.summary import (
    TrialRow,
    format_summary,
    log_study_outcome,
    mlflow_ui_command,
    summarize,
)
from ncstudy.targets import StudyTarget
from ncstudy.tuning import TRAIN_DRIVER_CPU, build_tuner, concurrency, grid_plan, search_plan
from ncstudy.tuning import trial_key as _key

# Names kept here for their callers (the CLI, tests, benchmarks) and for Ray Tune's state
# saved by an earlier version (its tuner.pkl refers to `ncstudy.study._key` by name).
__all__ = [
    "MARKER",
    "TRAIN_DRIVER_CPU",
    "StudyError",
    "StudyPaths",
    "TrialRow",
    "_key",
    "check_can_start",
    "format_summary",
    "mlflow_ui_command",
    "run_study",
    "summarize",
]


@dataclass(frozen=True)
class StudyRun:
    """One run of the driver: the study, where it writes and records, and how it runs."""

    study: StudySpec
    paths: StudyPaths
    target: StudyTarget
    mlf: Any
    study_yaml: str
    resume: bool
    concurrency: int
    verbose: bool = False  # Ray's and Tune's own output on the console
    tune_status: dict[str, str] = field(default_factory=dict)  # trial key -> Tune's last status


def run_study(
    study: StudySpec,
    *,
    resume: bool = False,
    address: str | None = None,
    storage_path: str | None = None,
    ray_init_kwargs: dict[str, Any] | None = None,
    verbose: bool = False,
) -> list[TrialRow]:
    """Run (or resume) every trial of the study; returns the summary rows. Everything that can
    refuse the study is checked before anything is written (StudyError). Without `verbose`
    the console shows ncstudy's progress display only, not Ray's and Tune's own output."""
    check_services(address, search=study.search is not None)  # Ray, MLflow, Optuna DB answer
    trials = None if study.search is not None else expand(study)
    paths = StudyPaths.of(study, storage_path)
    check_can_start(study, resume, paths, trials)
    _start_ray(address, ray_init_kwargs, verbose)
    at_once = _check_cluster(study, paths, trials, existing_cluster=address is not None)
    probe = trials[0] if trials else _search_probe(study)
    check_free_space(study, paths, probe, at_once)
    lock = LocalLock(paths.study_dir)  # one driver per study, for this driver's life
    lock.acquire()
    try:
        # again, under the lock: a driver that ran and ended since the first check left a study
        check_can_start(study, resume, paths, trials)
        run = _open_study(study, paths, resume, at_once, verbose)
        with _display(study, trials, probe, verbose):
            rows = _drive_owned(run, trials)
    finally:
        lock.release()
    from ncstudy.convergence_ref import log_steps_to_ref  # torch: only after a finished study

    finished = [r.key for r in rows if r.status == "FINISHED"]
    log_steps_to_ref(run.mlf, run.target.experiment_id, finished)
    return rows


def _display(
    study: StudySpec, trials: list[TrialSpec] | None, probe: TrialSpec, verbose: bool
) -> progress.StudyProgress:
    """The console's progress display for this run (plain lines with --verbose, where Ray's
    and Tune's own output interleaves)."""
    total = len(trials) if trials is not None else _search_size(study)
    epochs = progress.planned_epochs(probe.model_dump(mode="json"))
    return progress.StudyProgress(total, epochs, live=False if verbose else None)


def _open_study(
    study: StudySpec, paths: StudyPaths, resume: bool, at_once: int, verbose: bool
) -> StudyRun:
    """The study's MLflow experiment and parent run (found again on --resume)."""
    # a UFM study has no dataset: leaving it out lets the logged study.yaml validate again
    dump = study.model_dump(mode="json", exclude={"dataset"} if study.ufm else None)
    study_yaml = yaml.safe_dump(dump, sort_keys=False)
    mlf = tracking.client(paths.tracking_uri)
    local_store = paths.tracking_uri.startswith("sqlite:")
    artifacts = paths.output_dir / "mlartifacts" if local_store else None
    try:
        experiment_id = tracking.ensure_experiment(mlf, study.name, artifacts, study.description)
    except ValueError as err:  # deleted meanwhile
        raise StudyError(str(err)) from None
    parent_id = tracking.ensure_parent_run(
        mlf, experiment_id, study.name, study_yaml, study.description
    )
    target = StudyTarget(
        tracking_uri=paths.tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent_id,
        train_storage=paths.train_storage,
    )
    return StudyRun(study, paths, target, mlf, study_yaml, resume, at_once, verbose)


def _drive_owned(run: StudyRun, trials: list[TrialSpec] | None) -> list[TrialRow]:
    """Drive the study under a lease on its parent run (drivers on other hosts sharing the
    MLflow store see it; the parent run shows the heartbeat)."""
    shared = not tracking.is_local_store(run.paths.tracking_uri) or "://" in run.paths.storage
    lease = Lease(
        run.mlf, run.target.parent_run_id, run.paths.study_dir, settle_s=SETTLE_S if shared else 0
    )
    lease.acquire()
    try:
        return _drive(run, trials)
    finally:
        lease.release()


def _drive(run: StudyRun, trials: list[TrialSpec] | None) -> list[TrialRow]:
    """Run the trials; whatever happens, no run stays open and the parent run ends with the
    study's outcome. An interruption is raised again (KeyboardInterrupt, or Ray's SystemExit)
    once everything is closed."""
    interrupted = False
    exiting: SystemExit | None = None
    crash: BaseException | None = None
    reserve = Reserve(run.paths.study_dir)  # freed on a full disk: the closing writes fit
    reserve.hold()
    STOPPED.clear()
    try:
        _mark_started(run)
        interrupted = _run_search(run) if run.study.search is not None else _run_grid(run, trials)
    except KeyboardInterrupt:
        interrupted = True
    except SystemExit as err:  # Ray's own SIGTERM handler (no CLI handler): close, then exit
        interrupted, exiting = True, err
    except BaseException as err:
        if full_disk_reason(err) is None:
            crash = err
            raise
        interrupted = True  # a full disk stops the study like Ctrl-C
        STOPPED.append(full_disk_reason(err) or "")
    finally:
        reserve.free()
        rows = _close_study(run, trials, interrupted, crash)
    if exiting is not None:
        raise exiting
    if STOPPED:
        raise DiskFull(STOPPED[0])
    if interrupted:
        raise KeyboardInterrupt
    return rows


def _mark_started(run: StudyRun) -> None:
    """The study's marker (and, on --resume, its YAML again on the parent run)."""
    if run.resume:  # only description / output_dir may differ (check_can_start)
        run.mlf.log_text(run.target.parent_run_id, run.study_yaml, "study.yaml")
    # the marker comes after the parent run: a marker always has its MLflow record
    run.paths.study_dir.mkdir(parents=True, exist_ok=True)
    (run.paths.study_dir / MARKER).write_text(run.study_yaml)


def _close_study(
    run: StudyRun, trials: list[TrialSpec] | None, interrupted: bool, crash: BaseException | None
) -> list[TrialRow]:
    """Close every child run left open, end the parent run, and read the summary rows."""
    keys = None if trials is None else {t.key for t in trials}
    why = None if crash is None else f"{type(crash).__name__}: {crash}"
    experiment_id, parent_id = run.target.experiment_id, run.target.parent_run_id
    search = run.study.search
    _close_open_runs(run.mlf, experiment_id, keys, interrupted, search, run.tune_status, why)
    rows = summarize(run.mlf, experiment_id, trials)
    log_study_outcome(run.mlf, experiment_id, parent_id)
    if crash is not None:
        tracking.finish_run(run.mlf, parent_id, "FAILED", f"the study driver failed: {why}")
    else:
        tracking.finish_run(run.mlf, parent_id, "KILLED" if interrupted else "FINISHED")
    return rows


def _start_ray(
    address: str | None, ray_init_kwargs: dict[str, Any] | None, verbose: bool = False
) -> None:
    """Start (or connect to) Ray unless it runs already. ray.init replaces the caller's SIGTERM
    handler by an immediate exit; a handler the caller installed (the CLI's, which stops the
    study like Ctrl-C) is put back. Without `verbose` the workers' output (Ray Train's
    checkpoint lines, library INFO lines) stays in Ray's log files: a trial's failure reaches
    the console through the summary (its MLflow reason tag) and Tune's error lines."""
    import ray  # ray: only when a study runs

    if ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    # "local": always a fresh local Ray, never a cluster that happens to run on this machine
    from ncstudy.local_ray import local_ray_kwargs  # listens on 127.0.0.1 only

    kwargs = ray_init_kwargs or ({} if address else local_ray_kwargs(verbose))
    ray.init(address=address or "local", **{"log_to_driver": verbose, **kwargs})
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def _check_cluster(
    study: StudySpec, paths: StudyPaths, trials: list[TrialSpec] | None, existing_cluster: bool
) -> int:
    """How many trials run at once; refuses (StudyError) a study that cannot run on this Ray:
    no trial fits, results and runs on storage other nodes cannot reach, or a bad Optuna
    storage URL."""
    import ray  # ray: only when a study runs

    probe = trials[0] if trials else _search_probe(study)
    if study.search is not None:
        from ncstudy.search import optuna_storage_url  # optuna: only for searches

        optuna_storage_url(paths.study_dir)  # a bad NCSTUDY_OPTUNA_STORAGE: StudyError now
    try:
        at_once = concurrency(study, probe, existing_cluster)
        nodes = sum(bool(n["Alive"]) for n in ray.nodes())
        check_storage_path(paths.storage, node_count=nodes, existing_cluster=existing_cluster)
        if existing_cluster:
            check_tracking_uri(paths.tracking_uri)
    except ValueError as err:
        raise StudyError(str(err)) from None
    if existing_cluster:
        print(f"up to {at_once} trial(s) at once on the Ray cluster ({nodes} node(s) now)")
    return at_once


def _search_probe(study: StudySpec) -> TrialSpec:
    """A trial of the study's search (every search trial has the study's resources)."""
    from ncstudy import search as s  # optuna: only for searches

    return s.trial_from_point(study, 0, {})


def _run_grid(run: StudyRun, trials: list[TrialSpec] | None) -> bool:
    """Run the grid's trials that have not finished; True if the run was interrupted."""
    assert trials is not None
    rows = summarize(run.mlf, run.target.experiment_id, trials)
    done = {row.key for row in rows if row.status == "FINISHED"}
    todo = [t for t in trials if t.key not in done]
    if not todo:
        return False
    _skip(len(trials) - len(todo))
    plan = grid_plan(todo)
    tuner = build_tuner(
        plan, run.study, run.paths, run.target, run.resume, run.concurrency, run.verbose
    )
    _fit(tuner, run.verbose)
    return _was_interrupted(run.paths.tune_path(), len(todo), run.tune_status)


def _run_search(run: StudyRun) -> bool:
    """One Optuna search per loss, in order; True if the run was interrupted."""
    from ncstudy import search as s  # optuna: only for searches

    study = run.study
    assert study.search is not None
    # A trial that fails before its first evaluation (NaN loss) reports without the search
    # metric; Tune's strict check would then abort the whole search. The metric is validated
    # up front (spec: every epoch reports it), and ASHA, the median rule and our searcher all
    # skip results that lack it, so the check only turns one failed trial into a dead study.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    for index, loss in enumerate(study.losses):
        total = s.n_trials(study.search, loss)
        left = total - s.finished_optuna_trials(study, loss, run.paths.study_dir)
        _skip(total - max(left, 0))
        plan = search_plan(study, index, run.paths, run.target, left)
        tuner = build_tuner(
            plan, study, run.paths, run.target, run.resume, run.concurrency, run.verbose
        )
        if tuner is None:
            continue
        _fit(tuner, run.verbose)
        if _was_interrupted(run.paths.tune_path(loss.name), left, run.tune_status):
            return True
    return False


def _skip(finished: int) -> None:
    """Count trials an earlier run finished as done on the display."""
    if (shown := progress.current()) is not None and finished > 0:
        shown.skip(finished)


def _search_size(study: StudySpec) -> int:
    """How many trials the study's searches run in all."""
    from ncstudy import search as s  # optuna: only for searches

    assert study.search is not None
    return sum(s.n_trials(study.search, loss) for loss in study.losses)


def _fit(tuner: Any, verbose: bool = False) -> None:
    """Run a Tuner with Tune's SIGINT handler only while it runs. Tune installs its handler
    (stop the run, save the experiment) at the start of `fit()` and restores the previous one
    only after a signal, so without this a later Ctrl-C or SIGTERM (the CLI forwards SIGTERM to
    the SIGINT handler) would reach a finished run's handler and be swallowed."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        with progress.tune_output(verbose):
            tuner.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _was_interrupted(tune_path: str, expected: int, tune_status: dict[str, str]) -> bool:
    """Whether Tune's run at `tune_path` stopped early. Tune's SIGINT handler ends the run and
    returns normally, and the ResultGrid then calls every trial TERMINATED; the experiment
    state it saved is exact (an interrupted trial is saved PENDING, to be resumed). Records
    each trial's saved status in `tune_status`."""
    from ray.tune import ExperimentAnalysis  # ray: only when a study runs

    trials = ExperimentAnalysis(tune_path).trials
    tune_status.update({_key(t): t.status for t in trials})
    return len(trials) < expected or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


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
