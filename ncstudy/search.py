"""Optuna searches run by Ray Tune: one Optuna study per loss, stored next to the results
(`<study>/optuna.db`, or the RDB URL in NCSTUDY_OPTUNA_STORAGE on a cluster; readable by
`optuna-dashboard`), pruned by ASHA or the median rule on the per-epoch metric. A resumed search
continues the same Optuna study: no trial is repeated and none is lost."""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
from ray.tune.search.optuna import OptunaSearch

from ncstudy import tracking
from ncstudy.config import LossSpec, RangeSpec, SearchSpec, StudySpec, TrialSpec, resolve_trial
from ncstudy.config.loss_inputs import loss_axes, loss_temperatures
from ncstudy.paths import StudyError
from ncstudy.targets import StudyTarget

STORAGE_ENV = "NCSTUDY_OPTUNA_STORAGE"
STOPPED_AT_TAG = tracking.STOPPED_AT_TAG
RETRY_OF_ATTR = "ncstudy.retry_of"  # user attr of a trial that re-runs a lost (stale) one
log = logging.getLogger(__name__)


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch with the bookkeeping a study needs: each sampled point becomes its resolved
    trial before Tune sees it (every trial function receives `{"trial": <TrialSpec>}`); trials
    stopped by the scheduler are PRUNED (Ray's records them COMPLETE with their last value) and
    their MLflow runs end KILLED at once, with the epoch they stopped at; NaN-failed trials are
    FAIL; Optuna steps are our own epochs (Tune's training_iteration restarts at 1 after a trial
    restart)."""

    def __init__(
        self,
        *args: Any,
        study: StudySpec,
        loss_index: int,
        target: StudyTarget | None = None,
        pruner: str = "none",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._study, self._loss_index = study, loss_index
        self._target = target  # where the trials' MLflow runs are (None: no MLflow, in tests)
        self._pruner = pruner
        self._keys: dict[str, str] = {}  # Tune trial id -> the trial key it was given
        self._reported: dict[str, set[int]] = {}  # Tune trial id -> epochs told to Optuna

    def suggest(self, trial_id: str) -> dict | None:
        """The resolved trial of the sampled point; its key ends with the Optuna trial number."""
        config = super().suggest(trial_id)
        if not isinstance(config, dict):
            return config  # None (wait) or Searcher.FINISHED
        number = self._ot_trials[trial_id].number
        trial = search_trial(self._study, self._loss_index, config.get("point", {}), number)
        self._keys[trial_id] = trial.key
        return {"trial": trial.model_dump(mode="json")}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials:
            return
        result = result or {}
        status = result.get("status")
        if error or status == "failed":
            self._tell(trial_id, TrialState.FAIL)  # the trial closed its own run as FAILED
        elif status == "finished":
            self._tell(trial_id, TrialState.COMPLETE, result.get(self.metric))
            # a scheduler that stops a trial at max_t stops it inside its last report, before
            # the trial function could close its run
            self._close_run(trial_id, "FINISHED")
        else:  # stopped by the scheduler before its last epoch
            self._report(trial_id, result)  # stopped at this report: Optuna never saw it
            self._tell(trial_id, TrialState.PRUNED)
            if "epoch" in result:  # it ran: its run ends here, not at the end of the study
                self._close_run(trial_id, "KILLED", int(result["epoch"]))
        self._completed_trials.add(trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        if "epoch" not in result or self.metric not in result:
            return  # e.g. the checkpoint report before the downstream evaluations (train.py)
        epoch = int(result["epoch"])
        seen = self._reported.setdefault(trial_id, set())
        if epoch not in seen:  # a trial restarted from a checkpoint reports epochs again
            self._ot_trials[trial_id].report(result[self.metric], step=epoch)
            seen.add(epoch)

    def _tell(self, trial_id: str, state: TrialState, value: float | None = None) -> None:
        ot_trial = self._ot_trials[trial_id]
        try:
            if state == TrialState.COMPLETE:  # Optuna records a NaN or missing value as FAIL
                self._ot_study.tell(ot_trial, value)
            else:
                self._ot_study.tell(ot_trial, state=state)
        except RuntimeError:
            # GridSampler.after_trial calls study.stop() once every grid point has started;
            # outside Study.optimize() that raises, after the state is stored (Ray's own
            # OptunaSearch swallows it too). Anything else that left the trial open is real.
            stored = self._ot_study._storage.get_trial(ot_trial._trial_id).state
            if not stored.is_finished():
                raise

    def _close_run(self, trial_id: str, status: str, epoch: int | None = None) -> None:
        """End the trial's MLflow run if it is still RUNNING (a stopped trial's process never
        returns to close it): KILLED with the epoch it stopped at, or FINISHED."""
        target, key = self._target, self._keys.get(trial_id)
        if target is None or key is None:  # no MLflow behind this searcher (unit tests)
            return
        from mlflow.exceptions import MlflowException  # mlflow: only when a run is closed

        try:
            mlf = tracking.client(target.tracking_uri)
            for run in tracking.find_runs(mlf, target.experiment_id, tracking.TRIAL_KEY_TAG, key):
                if run.info.status != "RUNNING":
                    continue
                if status == "KILLED":
                    tracking.finish_pruned(mlf, run.info.run_id, self._pruner, epoch)
                else:
                    tracking.finish_run(mlf, run.info.run_id, status)
        except (MlflowException, OSError) as err:
            # raising here would make Tune fail and retry the stopped trial; the study closes
            # every run still RUNNING when it ends (study._close_open_runs)
            log.warning(
                "could not close the MLflow run of %s now (%s); it is closed at the "
                "end of the study",
                key,
                err,
            )


def loss_space(search: SearchSpec, loss: LossSpec) -> dict[str, RangeSpec | list[Any]]:
    """The part of the search space that applies to `loss` (temperature and loss.<param> only
    for the losses that have them)."""
    return loss_axes(loss.name, search.space)


def grid_size(space: dict[str, RangeSpec | list[Any]]) -> int:
    """Number of points of an all-categorical space."""
    n = 1
    for dim in space.values():
        n *= len(dim)  # type: ignore[arg-type]
    return n


def n_trials(search: SearchSpec, loss: LossSpec) -> int:
    """Trials of the search for this loss (the grid sampler: the grid's size)."""
    if search.sampler == "grid":
        space = loss_space(search, loss)
        return min(search.n_trials or grid_size(space), grid_size(space))
    assert search.n_trials is not None
    return search.n_trials


def tune_space(search: SearchSpec, loss: LossSpec) -> dict[str, Any]:
    """Tune domains of the space (OptunaSearch converts them to Optuna distributions named
    `point/<name>`, the names the grid sampler's space uses)."""
    out: dict[str, Any] = {}
    for name, dim in loss_space(search, loss).items():
        if isinstance(dim, list):
            out[name] = tune.choice(dim)
        elif dim.log:
            out[name] = tune.loguniform(dim.low, dim.high)
        else:
            out[name] = tune.uniform(dim.low, dim.high)
    return out


def trial_from_point(study: StudySpec, loss_index: int, point: dict[str, Any]) -> TrialSpec:
    """The resolved trial of one sampled point (the seed is the grid's first seed)."""
    loss = study.losses[loss_index]
    temp = point.get("temperature", loss_temperatures(study, loss)[0])
    batch = point.get("batch_size", study.grid.batch_size[0])
    axes = {k: v for k, v in point.items() if k.startswith(("train.", "loss."))}
    return resolve_trial(study, loss, temp, batch, study.grid.seed[0], axes)


def search_trial(
    study: StudySpec, loss_index: int, point: dict[str, Any], optuna_trial: int
) -> TrialSpec:
    """The trial Tune runs for a sampled point. A search may sample the same point twice (TPE
    does), so its key ends with the Optuna trial number (`-o3`): stable across --resume, unique
    within the search."""
    trial = trial_from_point(study, loss_index, point)
    return trial.model_copy(update={"key": f"{trial.key}-o{optuna_trial}"})


def optuna_storage_url(study_dir: Path) -> str:
    """Where the Optuna studies live: the RDB URL in NCSTUDY_OPTUNA_STORAGE (a database every
    node of a cluster reaches: postgresql://..., mysql://..., sqlite:////shared/abs/path.db),
    else a SQLite file next to the results, `<study_dir>/optuna.db`."""
    url = os.environ.get(STORAGE_ENV, "").strip()
    if not url:
        return f"sqlite:///{study_dir.resolve()}/optuna.db"
    if "://" not in url:
        raise StudyError(
            f"{STORAGE_ENV}={url!r} is not an Optuna RDB URL; set it to e.g. "
            "postgresql://user@host/db or sqlite:////shared/abs/path/optuna.db, or unset it "
            "to keep the study's own <output_dir>/<study>/optuna.db"
        )
    return url


def dashboard_command(study_dir: Path) -> str:
    """The optuna-dashboard command for this study's storage, without any password in the URL
    (the dashboard takes the same URL; the password stays in NCSTUDY_OPTUNA_STORAGE)."""
    from sqlalchemy.engine import make_url  # sqlalchemy: only for this one printed command

    url = optuna_storage_url(study_dir)
    shown = make_url(url).render_as_string(hide_password=True)
    note = f"  (password: see {STORAGE_ENV})" if shown != url else ""
    return f"optuna-dashboard {shown}{note}"


def optuna_study_name(study: StudySpec, loss: LossSpec) -> str:
    """One Optuna study per loss of the ncstudy study."""
    return f"{study.name}-{loss.name}"


def make_sampler(search: SearchSpec, loss: LossSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the search names, seeded."""
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.tpe_startup())
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    # Tune's grid_search is rejected by OptunaSearch: Optuna's GridSampler instead
    space = {f"point/{k}": v for k, v in loss_space(search, loss).items()}
    return optuna.samplers.GridSampler(space, seed=search.seed)


def make_searcher(
    study: StudySpec, loss_index: int, study_dir: Path, target: StudyTarget | None = None
) -> PruningOptunaSearch:
    """Ray Tune's OptunaSearch over the loss's Optuna study, with the loss's space (named
    `point/<name>`, the names the grid sampler's space uses). Called for a new Tuner only (a
    Tuner restored from Tune's saved state keeps its own searcher), so trials the storage still
    holds as RUNNING belong to a run that is gone: they are retired and re-run."""
    search, loss = study.search, study.losses[loss_index]
    assert search is not None
    storage = optuna.storages.RDBStorage(optuna_storage_url(study_dir))
    retire_stale_trials(storage, optuna_study_name(study, loss))
    return PruningOptunaSearch(
        # converted here: Tune's domains given as `space` would be converted with a warning
        space=OptunaSearch.convert_search_space({"point": tune_space(search, loss)}),
        metric=search.metric,
        mode=search.mode,
        sampler=make_sampler(search, loss),
        study_name=optuna_study_name(study, loss),
        storage=storage,
        study=study,
        loss_index=loss_index,
        target=target,
        pruner=search.pruner,
    )


def make_scheduler(search: SearchSpec, max_epochs: int) -> Any:
    """ASHA or the median stopping rule on our own `epoch` counter (Tune's training_iteration
    restarts at 1 after a trial restart), or None."""
    if search.pruner == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            max_t=max_epochs,
            grace_period=search.grace(max_epochs),
            reduction_factor=2,
        )
    if search.pruner == "median":
        return MedianStoppingRule(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            grace_period=search.grace(max_epochs),
            min_samples_required=2,
        )
    return None


def retire_stale_trials(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Mark the study's RUNNING trials FAIL and enqueue each one's point again (user attr
    `ncstudy.retry_of`), so a resume without Tune's saved state neither leaves them RUNNING in
    the dashboard nor loses them. Returns how many were retired."""
    try:
        ot = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = ot.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        ot.tell(t.number, state=TrialState.FAIL)
        ot.enqueue_trial(t.params, user_attrs={RETRY_OF_ATTR: t.number})
        log.warning(
            "optuna trial %d of %s was left RUNNING: marked FAIL, re-queued", t.number, study_name
        )
    return len(stale)


def finished_optuna_trials(study: StudySpec, loss: LossSpec, study_dir: Path) -> int:
    """Trials of the loss's search that already have an outcome (for resume): COMPLETE, PRUNED
    and FAIL (a NaN loss, a crash), but not a stale trial retired by `retire_stale_trials`,
    whose re-run is still to come."""
    url = optuna_storage_url(study_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return 0  # nothing stored yet (and never create an empty database file here)
    try:
        ot = optuna.load_study(study_name=optuna_study_name(study, loss), storage=url)
    except KeyError:
        return 0
    trials = ot.get_trials(deepcopy=False)
    retried = {t.user_attrs[RETRY_OF_ATTR] for t in trials if RETRY_OF_ATTR in t.user_attrs}
    return sum(t.state.is_finished() and t.number not in retried for t in trials)


def search_points(search: SearchSpec, loss: LossSpec) -> list[dict[str, Any]]:
    """All points of an all-categorical space, in grid order (for tests and benchmarks)."""
    space = loss_space(search, loss)
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*space.values())]
