"""The convergence clock (the source paper's Table 7): closeness, EWMA, steps to 95% / to a ref.

closeness in [0, 1]: value/target for a nonzero target (K-1 for the ranks), 1 - value/initial
for a target of 0 (initial = the value at initialisation, step 0). The EWMA is time-aware: its
weight per iteration is `alpha`, so a measurement taken `n` iterations after the previous one
weighs 1 - (1 - alpha)^n, and the smoothed curve does not depend on how often the metric is
measured (the source paper counts iterations). `steps_to_95` is the earliest step from which
the EWMA of the closeness stays >= 0.95 to the end; `steps_to_ref` the earliest step at which a
trial's EWMA is at least as close to the target as the converged (final) EWMA of a reference
trial. Both work on plain (steps, values) lists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

THRESHOLD = 0.95

# Metrics whose NC value is 0 (closeness = 1 - value/initial).
ZERO_TARGET = (
    "nc1",
    "nc2_equinorm_means",
    "nc2_equinorm_weights",
    "nc2_equiangle_means",
    "nc2_equiangle_weights",
    "nc2_maxangle_means",
    "nc2_maxangle_weights",
    "nc2_etf_dist_means",
    "nc2_etf_dist_weights",
    "nc3",
    "nc4",
    "gnc1",
    "gnc3",
    "gnc3_centred",
    "erank_intra",
    "align_weight_mean",
    "align_weight_inst",
    "align_inst_mean",
    "hdr",
    "nc2_zhou",
    "nc3_zhou",
)
# Metrics whose NC value is K-1 (closeness = value/(K-1)).
SIMPLEX_RANK_TARGET = ("erank_inter", "erank_weights")
UNIT_TARGET = ("nc3_cos",)

# The metrics the clock follows (spec/metrics.md, the source paper's Table 7): the histories the
# worker loops record and the `steps_to_95/<name>` they log. Network trials:
NETWORK_CLOCK_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "nc1",
)
# UFM trials: the same without erank_intra.
UFM_CLOCK_METRICS = tuple(m for m in NETWORK_CLOCK_METRICS if m != "erank_intra")
# MLflow keys of the clock pass's measurements (`clock/<name>`, step = training iteration); the
# UFM trials have no separate pass, their clock reads `nc/<name>` (step = iteration as well).
CLOCK_PREFIX = "clock/"


def metric_target(name: str, num_classes: int) -> float:
    """The perfect-NC value of a tracked metric: K-1 for the ranks, 1 for nc3_cos, else 0."""
    if name in SIMPLEX_RANK_TARGET:
        return float(num_classes - 1)
    if name in UNIT_TARGET:
        return 1.0
    if name in ZERO_TARGET:
        return 0.0
    tracked = ", ".join(ZERO_TARGET + SIMPLEX_RANK_TARGET + UNIT_TARGET)
    raise ValueError(
        f"metric {name!r} has no convergence target (its optimum depends on d or lies below 1); "
        f"track one of: {tracked}"
    )


def closeness(values: Sequence[float] | np.ndarray, target: float, initial: float) -> np.ndarray:
    """Per-step closeness to the target in [0, 1].

    For target 0 and initial 0 (already at the target at initialisation) the closeness is 1
    where the value is 0 and 0 elsewhere.
    """
    v = np.asarray(values, dtype=np.float64)
    if target != 0:
        c = v / target
    elif initial != 0:
        c = 1.0 - v / initial
    else:
        c = (v == 0).astype(np.float64)
    return np.clip(c, 0.0, 1.0)


def ewma(
    x: Sequence[float] | np.ndarray,
    alpha: float = 0.1,
    steps: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Time-aware exponentially weighted moving average: y_0 = x_0,
    y_t = y_{t-1} + (1 - (1-alpha)^(s_t - s_{t-1})) (x_t - y_{t-1}).

    `alpha` is the weight of one step: a measurement `n` steps after the previous one stands for
    the n steps since then (the EWMA of the held value), so the curve at a given step does not
    depend on how often it was measured. Without `steps`: one step between measurements.
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    x = np.asarray(x, dtype=np.float64)
    if steps is None:
        gaps = np.ones(len(x))
    else:
        if len(steps) != len(x):
            raise ValueError(f"ewma: {len(steps)} steps for {len(x)} values")
        gaps = np.diff(np.asarray(steps, dtype=np.float64), prepend=0.0)
        if np.any(gaps[1:] <= 0):
            raise ValueError(f"ewma: steps must increase strictly, got {list(steps)}")
    weights = 1.0 - (1.0 - alpha) ** gaps
    y = np.empty_like(x)
    for t, value in enumerate(x):
        y[t] = value if t == 0 else y[t - 1] + weights[t] * (value - y[t - 1])
    return y


def _check_series(steps: Sequence[int], values: Sequence[float], what: str) -> None:
    """Steps and values of one series must have equal lengths."""
    if len(steps) != len(values):
        raise ValueError(
            f"{what}: steps ({len(steps)}) and values ({len(values)}) must have the same length"
        )


def steps_to_95(
    steps: Sequence[int], values: Sequence[float], target: float, alpha: float = 0.1
) -> int | None:
    """Earliest step from which the time-aware EWMA (alpha per step) of the closeness stays
    >= 0.95; None if never.

    The series must start at initialisation (step 0, before the first optimiser step): its
    first value is the value at init that a target of 0 measures closeness against, and the
    EWMA starts there. A series that starts later is refused rather than silently rescaled.
    """
    _check_series(steps, values, "steps_to_95")
    if len(values) == 0:
        return None
    if int(steps[0]) != 0:
        raise ValueError(
            f"steps_to_95: the series must start at step 0 (the value at initialisation), "
            f"got first step {steps[0]}; run a metrics pass before the first training step"
        )
    smooth = ewma(closeness(values, target, float(values[0])), alpha, steps)
    below = np.flatnonzero(smooth < THRESHOLD)
    first = 0 if below.size == 0 else int(below[-1]) + 1
    return int(steps[first]) if first < len(steps) else None


def steps_to_ref(
    steps: Sequence[int],
    values: Sequence[float],
    ref_steps: Sequence[int],
    ref_values: Sequence[float],
    target: float,
    alpha: float = 0.1,
) -> int | None:
    """Earliest step at which the trial's EWMA reaches the reference's converged EWMA value
    (both time-aware, alpha per step).

    "Reaches" means at least as close to the target: |ewma - target| <= |ref_final - target|
    (closeness is monotone in the value, so this is the same test on the closeness scale).
    """
    _check_series(steps, values, "steps_to_ref")
    _check_series(ref_steps, ref_values, "steps_to_ref (reference)")
    if len(values) == 0 or len(ref_values) == 0:
        return None
    reference = float(ewma(ref_values, alpha, ref_steps)[-1])
    smooth = ewma(values, alpha, steps)
    reached = np.flatnonzero(np.abs(smooth - target) <= abs(reference - target))
    return int(steps[int(reached[0])]) if reached.size else None


def record_history(
    history: dict[str, list[tuple[int, float]]],
    metrics: dict[str, float],
    step: int,
    names: Sequence[str],
    prefix: str = "nc/",
) -> None:
    """Append the clock's metrics of one report (`<prefix><name>` for each of `names`) to their
    (step, value) histories, the input of `steps_to_95` and `steps_to_ref`."""
    for name in names:
        if f"{prefix}{name}" in metrics:
            history.setdefault(name, []).append((step, metrics[f"{prefix}{name}"]))


def clock_summary(
    history: dict[str, list[tuple[int, float]]], num_classes: int, alpha: float
) -> dict[str, float]:
    """The convergence clock of each recorded metric (`record_history`): `steps_to_95/<name>`
    for every metric whose EWMA closeness reaches 0.95 (none for one that never does)."""
    out: dict[str, float] = {}
    for name, series in history.items():
        steps, values = zip(*series, strict=True)
        target = metric_target(name, num_classes)
        reached = steps_to_95(list(steps), list(values), target, alpha)
        if reached is not None:
            out[f"steps_to_95/{name}"] = float(reached)
    return out
