"""The convergence clock does not depend on how often it measures (issue 16 §1): a time-aware
EWMA (weight per iteration), and the clock pass's metrics against the streaming pass's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncstudy.config import EvaluationSpec
from ncstudy.evaluate.clock import clock_indices
from ncstudy.metrics import NCAccumulator, compute_nc_metrics, ewma, steps_to_95
from ncstudy.metrics.clock_metrics import clock_metrics
from ncstudy.metrics.convergence import NETWORK_CLOCK_METRICS

TOTAL, REACHED = 1000, 317  # a metric that jumps to its target at iteration 317


def _lag(alpha: float, before: float) -> int:
    """Iterations from a jump of the closeness (from `before` to 1) to the first step at which
    the per-iteration EWMA reads >= 0.95: n - 1 for the smallest n with
    (1 - before) (1 - alpha)^n <= 0.05 (the step of the jump itself is the first of the n)."""
    if alpha == 1:
        return 0
    return math.ceil(math.log(0.05 / (1 - before)) / math.log(1 - alpha)) - 1


@pytest.mark.parametrize("alpha", [1.0, 0.1, 0.02])
@pytest.mark.parametrize("cadence", [1, 5, 50])
def test_steps_to_95_lands_within_one_clock_interval(cadence: int, alpha: float) -> None:
    steps = list(range(0, TOTAL + 1, cadence))
    nc1 = [10.0 if s < REACHED else 0.0 for s in steps]  # target 0
    erank = [2.0 if s < REACHED else 9.0 for s in steps]  # target K - 1 = 9
    for values, target, before in ((nc1, 0.0, 0.0), (erank, 9.0, 2 / 9)):
        expected = REACHED + _lag(alpha, before)  # the same at every cadence, in iterations
        got = steps_to_95(steps, values, target, alpha)
        assert got is not None and abs(got - expected) <= cadence, (cadence, alpha, got)


def test_the_old_per_evaluation_ewma_depended_on_the_cadence() -> None:
    """What the issue measured: an EWMA that advances once per measurement reads 28 measurements
    after the jump, i.e. 28 x the cadence (or never); the time-aware one reads the same
    iteration (28 iterations after the jump) at every cadence, within one interval."""
    got = {}
    for cadence in (1, 5, 50):
        steps = list(range(0, TOTAL + 1, cadence))
        values = [10.0 if s < REACHED else 0.0 for s in steps]
        untimed = ewma(1 - np.asarray(values) / 10.0, 0.1)  # one step per measurement
        first = int(np.flatnonzero(untimed < 0.95)[-1]) + 1
        if cadence < 50:
            assert first - int(np.argmax(np.asarray(steps) >= REACHED)) == 28
        else:  # 14 measurements after the jump: never, as the issue found at every: 50
            assert first == len(steps)
        got[cadence] = steps_to_95(steps, values, 0.0, 0.1)
    assert max(got.values()) - min(got.values()) <= 50
    assert all(abs(g - (REACHED + 28)) <= c for c, g in got.items())


def test_a_gradual_approach_reads_the_same_at_every_cadence() -> None:
    """nc1 = 10 exp(-s / 150): its per-iteration EWMA crosses 0.95 at one iteration; measured
    every 1, 5 or 50 iterations the clock lands within one interval of it."""
    dense = steps_to_95(list(range(TOTAL + 1)), [10 * math.exp(-s / 150) for s in range(1001)], 0.0)
    assert dense is not None and 400 < dense < 700
    for cadence in (5, 50):
        steps = list(range(0, TOTAL + 1, cadence))
        got = steps_to_95(steps, [10 * math.exp(-s / 150) for s in steps], 0.0)
        assert got is not None and abs(got - dense) <= cadence


def test_ewma_refuses_steps_that_do_not_increase() -> None:
    with pytest.raises(ValueError, match="increase strictly"):
        ewma([1.0, 0.5], 0.1, steps=[0, 0])
    with pytest.raises(ValueError, match="2 steps for 3 values"):
        ewma([1.0, 0.5, 0.2], 0.1, steps=[0, 1])


def _features(n_per_class: int, num_classes: int, dim: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_classes).repeat(n_per_class)
    means = 3 * torch.randn(num_classes, dim, generator=g)
    h = means[y] + torch.randn(len(y), dim, generator=g) + 5.0  # offset: not centred
    w = means + 0.5 * torch.randn(num_classes, dim, generator=g)
    return h, y, w


@pytest.mark.parametrize("max_intra", [100, 3])
def test_clock_metrics_match_the_streaming_pass(max_intra: int) -> None:
    """The clock's direct computation against the NCAccumulator statistics (centred streaming
    sums, d x d eigendecompositions) on the same features: the same definitions."""
    h, y, w = _features(n_per_class=9, num_classes=6, dim=12, seed=3)
    got = clock_metrics(h, y, 6, w, max_intra_classes=max_intra)
    acc = NCAccumulator(6, 12, max_intra_classes=max_intra)
    for start in range(0, len(y), 10):  # batches that split classes
        acc.update(h[start : start + 10].double(), y[start : start + 10])
    expected = compute_nc_metrics(acc.statistics(), w.double())
    assert set(got) == set(NETWORK_CLOCK_METRICS)
    for name, value in got.items():
        assert value == pytest.approx(expected[name], rel=1e-9, abs=1e-12), name


def test_clock_metrics_without_weights_and_of_collapsed_classes() -> None:
    h, y, _ = _features(n_per_class=4, num_classes=3, dim=5, seed=1)
    assert set(clock_metrics(h, y, 3, None)) == {"nc1", "erank_inter", "erank_intra"}
    collapsed = torch.eye(3, 5)[y] * 2.0  # every class at one point: perfect NC1
    got = clock_metrics(collapsed, y, 3, None)
    assert got["erank_intra"] == 0.0 and got["nc1"] == pytest.approx(0.0, abs=1e-12)
    assert clock_metrics(torch.full((4, 5), math.nan), y[:4], 3, None) == {}


def test_the_clock_subset_is_fixed_seeded_and_capped() -> None:
    a, b = clock_indices(5000, 300, seed=0), clock_indices(5000, 300, seed=0)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 300 and np.all(np.diff(a) > 0) and a.max() < 5000
    assert not np.array_equal(a, clock_indices(5000, 300, seed=1))
    np.testing.assert_array_equal(clock_indices(40, 300, seed=0), np.arange(40))


def test_clock_settings_are_validated() -> None:
    spec = EvaluationSpec(convergence={"every_steps": 20, "subset_size": 500})
    assert spec.convergence.every_steps == 20 and spec.convergence.subset_size == 500
    assert EvaluationSpec().convergence.every_steps == 50
    with pytest.raises(ValueError, match="every_steps"):
        EvaluationSpec(convergence={"every_steps": 0})
    with pytest.raises(ValueError, match="subset_size"):
        EvaluationSpec(convergence={"subset_size": 1})
