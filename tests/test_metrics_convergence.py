"""The convergence clock on hand-made series (spec/metrics.md, Convergence speed)."""

from __future__ import annotations

import numpy as np
import pytest

from ncstudy.metrics import closeness, ewma, metric_target, steps_to_95, steps_to_ref


def test_metric_targets() -> None:
    assert metric_target("erank_inter", 100) == 99
    assert metric_target("erank_weights", 10) == 9
    assert metric_target("align_weight_inst", 10) == 0
    assert metric_target("nc1", 10) == 0
    assert metric_target("nc3_cos", 10) == 1
    with pytest.raises(ValueError, match="gnc2"):
        metric_target("gnc2", 10)


def test_closeness_both_kinds_of_target() -> None:
    np.testing.assert_allclose(closeness([4.5, 9.0, 12.0], 9.0, 4.5), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(closeness([2.0, 1.0, 0.0, 3.0], 0.0, 2.0), [0.0, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(closeness([0.0, 0.1], 0.0, 0.0), [1.0, 0.0])


def test_ewma_recursion() -> None:
    np.testing.assert_allclose(ewma([1.0, 0.0, 0.0], alpha=0.5), [1.0, 0.5, 0.25])
    np.testing.assert_allclose(ewma([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        ewma([1.0], alpha=0.0)


def test_steps_to_95_needs_to_stay_above() -> None:
    steps = [0, 10, 20, 30, 40, 50]
    # Target 0, initial 1: closeness 0, .96, .5, .96, .97, .99; alpha = 1 means no smoothing.
    values = [1.0, 0.04, 0.5, 0.04, 0.03, 0.01]
    assert steps_to_95(steps, values, target=0.0, alpha=1.0) == 30
    assert steps_to_95(steps, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 0.0, alpha=1.0) is None
    # Rank target 9: 9.0 * 0.95 = 8.55; smoothing with alpha 0.5 delays the crossing by a step.
    ranks = [1.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    smooth = ewma(np.array(ranks) / 9.0, alpha=0.5)
    first = int(np.argmax(smooth >= 0.95))
    assert steps_to_95(steps, ranks, target=9.0, alpha=0.5) == steps[first] == 50
    assert steps_to_95([], [], 0.0) is None


def test_steps_to_ref_reaches_the_reference_final_value() -> None:
    ref_steps = [0, 100, 200, 300]
    ref_values = [1.0, 0.5, 0.3, 0.2]  # converged (alpha=1) value 0.2
    steps = [0, 10, 20, 30]
    assert steps_to_ref(steps, [1.0, 0.4, 0.19, 0.1], ref_steps, ref_values, 0.0, alpha=1.0) == 20
    assert steps_to_ref(steps, [1.0, 0.9, 0.8, 0.7], ref_steps, ref_values, 0.0, alpha=1.0) is None
    # Upward target (erank_inter, K = 10): reference ends at 8, trial reaches 8 at step 30.
    assert steps_to_ref(steps, [2, 5, 7, 8.5], ref_steps, [2, 6, 7, 8], 9.0, alpha=1.0) == 30
    with pytest.raises(ValueError, match="same length"):
        steps_to_ref([0, 1], [1.0], ref_steps, ref_values, 0.0)
