"""Exact MLflow histories across restarts (issue 19, section 2): a trial restarted from the
checkpoint of epoch e redoes the epochs after e, some of which its earlier attempt had logged
already. `RunLogger` reads what the run holds when it opens and skips every (metric, step) it
finds there, so each history holds every step once, with the value first logged."""

from __future__ import annotations

from typing import Any

# MLflow's own system metrics monitor continues its steps after the last one it logged.
_OWN_STEPS = "system/"


def logged_steps(mlf: Any, run_id: str, held: Any = None) -> set[tuple[str, int]]:
    """Every (metric, step) the run holds (one query per metric; none for a new run); `held`:
    the metric names to look at where the caller has the run already."""
    held = mlf.get_run(run_id).data.metrics if held is None else held
    keys = [k for k in held if not k.startswith(_OWN_STEPS)]
    return {(k, m.step) for k in keys for m in mlf.get_metric_history(run_id, k)}


def not_logged(metrics: dict[str, Any], step: int, logged: set[tuple[str, int]]) -> dict[str, Any]:
    """The metrics that the run does not hold at `step` yet."""
    return {k: v for k, v in metrics.items() if (k, step) not in logged}


def next_step(mlf: Any, run_id: str, keys: Any) -> int:
    """The step after the last one at which the run logged any of `keys` (0 for none): values
    a study logs once per driver session (its outcome) get one step per session."""
    held = set(mlf.get_run(run_id).data.metrics) & set(keys)
    steps = [m.step for k in held for m in mlf.get_metric_history(run_id, k)]
    return max(steps, default=-1) + 1
