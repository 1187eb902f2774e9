"""Optuna searches run by Ray Tune: one Optuna study per loss, stored in SQLite next to the
results (`<study>/optuna.db`, readable by `optuna-dashboard`), pruned by ASHA or the median rule
on the per-epoch metric. A resumed search continues the same Optuna study."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from ncstudy.spec import LossSpec, RangeSpec, SearchSpec, StudySpec, TrialSpec, resolve_trial


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that records trials stopped by the scheduler as PRUNED (Ray's records them
    as COMPLETE with their last value) and NaN-failed trials as FAIL, so the Optuna study and
    its dashboard say what happened."""

    def suggest(self, trial_id: str) -> dict | None:
        """The sampled point, plus its Optuna trial number (it names the trial's run)."""
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            config = {**config, "optuna_trial": self._ot_trials[trial_id].number}
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        status = (result or {}).get("status")
        if error or status == "finished" or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if status != "failed" and result and self.metric in result:
            # a trial stopped at its first report never reached on_trial_result: keep its value
            ot_trial.report(result[self.metric], step=int(result.get("epoch", 1)))
        failed = status == "failed"
        state = optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED
        self._ot_study.tell(ot_trial, state=state)
        self._completed_trials.add(trial_id)


def loss_space(search: SearchSpec, loss: LossSpec) -> dict[str, RangeSpec | list[Any]]:
    """The part of the search space that applies to `loss` (temperature and loss.<param> only
    for the losses that have them)."""
    from ncstudy.losses import loss_params_model, takes_temperature

    fields = loss_params_model(loss.name).model_fields
    out = {}
    for name, dim in search.space.items():
        if name == "temperature" and not takes_temperature(loss.name):
            continue
        if name.startswith("loss.") and name[5:] not in fields:
            continue
        out[name] = dim
    return out


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
    """Tune domains of the space (OptunaSearch converts them to Optuna distributions)."""
    from ray import tune

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
    from ncstudy.losses import takes_temperature

    loss = study.losses[loss_index]
    temp = None
    if takes_temperature(loss.name):
        temp = point.get("temperature", (loss.temperatures or study.grid.temperature)[0])
    batch = point.get("batch_size", study.grid.batch_size[0])
    axes = {k: v for k, v in point.items() if k.startswith(("train.", "loss."))}
    return resolve_trial(study, loss, temp, batch, study.grid.seed[0], axes)


def optuna_storage_url(study_dir: Path) -> str:
    return f"sqlite:///{study_dir.resolve()}/optuna.db"


def make_sampler(search: SearchSpec, loss: LossSpec) -> optuna.samplers.BaseSampler:
    """The Optuna sampler the search names, seeded."""
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    if search.sampler == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=search.seed)
    # Tune's grid_search is rejected by OptunaSearch: Optuna's GridSampler instead
    space = {f"point/{k}": v for k, v in loss_space(search, loss).items()}
    return optuna.samplers.GridSampler(space, seed=search.seed)


def make_searcher(study: StudySpec, loss: LossSpec, study_dir: Path) -> Any:
    """Ray Tune's OptunaSearch over an Optuna study kept in `<study_dir>/optuna.db`."""
    search = study.search
    assert search is not None
    return PruningOptunaSearch(
        metric=search.metric,
        mode=search.mode,
        sampler=make_sampler(search, loss),
        study_name=f"{study.name}-{loss.name}",
        storage=optuna.storages.RDBStorage(optuna_storage_url(study_dir)),
    )


def make_scheduler(search: SearchSpec, max_epochs: int) -> Any:
    """ASHA or the median stopping rule on our own `epoch` counter (Tune's training_iteration
    restarts at 1 after a trial restart), or None."""
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    if search.pruner == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            max_t=max_epochs,
            grace_period=search.grace_epochs,
            reduction_factor=2,
        )
    if search.pruner == "median":
        return MedianStoppingRule(
            time_attr="epoch",
            metric=search.metric,
            mode=search.mode,
            grace_period=search.grace_epochs,
            min_samples_required=2,
        )
    return None


def finished_optuna_trials(study: StudySpec, loss: LossSpec, study_dir: Path) -> int:
    """Trials the loss's Optuna study already holds as complete or pruned (for resume)."""
    path = study_dir / "optuna.db"
    if not path.exists():
        return 0
    try:
        ot = optuna.load_study(
            study_name=f"{study.name}-{loss.name}", storage=optuna_storage_url(study_dir)
        )
    except KeyError:
        return 0
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return sum(t.state in done for t in ot.get_trials(deepcopy=False))


def search_points(search: SearchSpec, loss: LossSpec) -> list[dict[str, Any]]:
    """All points of an all-categorical space, in grid order (for tests and benchmarks)."""
    space = loss_space(search, loss)
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*space.values())]
