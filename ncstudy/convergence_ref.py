"""`steps_to_ref/<metric>`: how soon each trial reaches a reference trial's converged NC value.

The reference of a trial is the finished trial of `evaluation.convergence.reference_loss`
(default `ce`) with the same seed at the same grid point (batch size and extra axes), else the
first finished one with the same seed (spec/metrics.md, "Convergence speed"; the source paper's
Table 7 (II)); the EWMA uses `evaluation.convergence.ewma_alpha`. The reference itself gets its
own value too: the step at which it reaches its converged value, the denominator of Table 7
(II)'s ratios. Run at the end of a study, from the clock histories in MLflow (`clock/<metric>`
at training iterations; `nc/<metric>` for UFM trials, whose steps are iterations). The clock
itself (`ncstudy.metrics.steps_to_ref`) works on plain (steps, values) lists.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ncstudy import tracking
from ncstudy.config import TrialSpec
from ncstudy.history import logged_steps, not_logged
from ncstudy.metrics import metric_target, steps_to_ref
from ncstudy.metrics.convergence import CLOCK_PREFIX

REFERENCE_TAG = "ncstudy.steps_to_ref.reference"
NC_PREFIX = "nc/"
Series = tuple[list[int], list[float]]  # a metric's history: steps, values


def clock_prefix(metric_keys: Iterable[str]) -> str:
    """Where a run's clock histories are: `clock/` (the network trials' clock pass, step =
    iteration) when it logged any, else `nc/` (UFM trials, and runs from before the pass)."""
    return CLOCK_PREFIX if any(k.startswith(CLOCK_PREFIX) for k in metric_keys) else NC_PREFIX


def metric_series(mlf: Any, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """A metric's history sorted by step, one value per step (the latest logged: a resumed trial
    may log a step twice)."""
    latest: dict[int, tuple[int, float]] = {}
    for m in mlf.get_metric_history(run_id, key):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    steps = sorted(latest)
    return steps, [latest[s][1] for s in steps]


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow download progress bars while fetching small artifacts."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def trial_spec_of(mlf: Any, run_id: str) -> Any:
    """The resolved TrialSpec a child run was started with (its `trial.yaml` artifact)."""
    with quiet_downloads(), tempfile.TemporaryDirectory() as tmp:
        path = mlf.download_artifacts(run_id, "trial.yaml", tmp)
        return TrialSpec.model_validate(yaml.safe_load(Path(path).read_text()))


def num_classes_of(trial: Any) -> int:
    """K of a trial: the UFM's K, else the dataset's class count."""
    if trial.ufm is not None:
        return int(trial.ufm.K)
    from ncstudy.data.registry import dataset_num_classes  # the data registry imports torch

    return dataset_num_classes(trial.dataset)


def choose_reference(trial: Any, candidates: list[Any]) -> Any | None:
    """The reference among `candidates` (finished reference-loss trials, in grid order): same
    seed, batch size and axes if one exists, else the first with the same seed, else None."""
    same_seed = [c for c in candidates if c.seed == trial.seed]
    for c in same_seed:
        if c.batch_size == trial.batch_size and c.axes == trial.axes:
            return c
    return same_seed[0] if same_seed else None


def reached_steps(
    metrics: Iterable[str],
    num_classes: int,
    series: Callable[[str], Series],
    ref_series: Callable[[str], Series],
    alpha: float,
) -> Iterator[tuple[str, list[int], int | None]]:
    """For each NC metric (name without `nc/`) that has a convergence target, in the given
    order: `(metric, the trial's steps, the step at which the trial's EWMA reaches the
    reference's converged value, or None)`. `series(metric)` and `ref_series(metric)` give the
    trial's and the reference's histories."""
    for metric in metrics:
        try:
            target = metric_target(metric, num_classes)
        except ValueError:
            continue  # no convergence target (e.g. gnc2, mir): nothing to reach
        steps, values = series(metric)
        ref_steps, ref_values = ref_series(metric)
        yield metric, steps, steps_to_ref(steps, values, ref_steps, ref_values, target, alpha)


def log_steps_to_ref(
    mlf: Any,
    experiment_id: str,
    trial_keys: list[str],
    *,
    alpha: float | None = None,
) -> None:
    """Log `steps_to_ref/<metric>` (and the reference's key as a tag) on every finished trial of
    `trial_keys` that has a finished reference trial; metrics never reached are not logged.

    The reference loss is each trial's `evaluation.convergence.reference_loss`; `alpha`
    defaults to its `evaluation.convergence.ewma_alpha`. Every `nc/<metric>` of the reference
    with a convergence target is compared. Unfinished and failed trials are skipped: a partial
    run has no converged value and no complete clock.
    """
    wanted = set(trial_keys)
    runs: dict[str, Any] = {}
    for run in mlf.search_runs([experiment_id], max_results=50000):
        key = run.data.tags.get(tracking.TRIAL_KEY_TAG)
        if key in wanted and run.info.status == "FINISHED":
            runs[key] = run
    specs = {key: trial_spec_of(mlf, runs[key].info.run_id) for key in trial_keys if key in runs}
    histories: dict[tuple[str, str], Series] = {}

    def history(key: str, prefix: str, metric: str) -> Series:
        if (key, prefix + metric) not in histories:
            run_id = runs[key].info.run_id
            histories[key, prefix + metric] = metric_series(mlf, run_id, prefix + metric)
        return histories[key, prefix + metric]

    for key, spec in specs.items():
        clock = spec.evaluation.convergence
        smoothing = clock.ewma_alpha if alpha is None else alpha
        ref_loss = clock.reference_loss
        ref = choose_reference(spec, [s for s in specs.values() if s.loss == ref_loss])
        if ref is None:
            continue
        num_classes = num_classes_of(spec)
        ref_metrics = runs[ref.key].data.metrics
        prefix = clock_prefix(ref_metrics)
        metrics = sorted(k[len(prefix) :] for k in ref_metrics if k.startswith(prefix))
        out: dict[str, float] = {}
        last_step = 0
        for metric, steps, reached in reached_steps(
            metrics,
            num_classes,
            functools.partial(history, key, clock_prefix(runs[key].data.metrics)),
            functools.partial(history, ref.key, prefix),
            smoothing,
        ):
            last_step = max([last_step, *steps])
            if reached is not None:
                out[f"steps_to_ref/{metric}"] = float(reached)
        run_id = runs[key].info.run_id
        mlf.set_tag(run_id, REFERENCE_TAG, ref.key)
        # a resumed study computes them again for the trials finished before: log each once
        held = [k for k in out if k in runs[key].data.metrics]
        out = not_logged(out, last_step, logged_steps(mlf, run_id, held))
        tracking.log_metrics(mlf, run_id, out, step=last_step)
