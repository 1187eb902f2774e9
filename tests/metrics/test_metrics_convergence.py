"""The convergence clock on hand-made series (spec/metrics.md, Convergence speed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

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
    # Rank target 9: 9.0 * 0.95 = 8.55; smoothing with alpha 0.5 per step (measured every step)
    # delays the crossing by four steps.
    ranks = [1.0, 9.0, 9.0, 9.0, 9.0, 9.0]
    smooth = ewma(np.array(ranks) / 9.0, alpha=0.5)
    first = int(np.argmax(smooth >= 0.95))
    assert steps_to_95(list(range(6)), ranks, target=9.0, alpha=0.5) == first == 5
    # Measured every 10 steps, the same alpha per step: the jump weighs 1 - 0.5^10 at once.
    assert steps_to_95(steps, ranks, target=9.0, alpha=0.5) == 10
    assert steps_to_95([], [], 0.0) is None


def test_steps_to_95_measures_closeness_against_the_value_at_init() -> None:
    # nc1 at init 10, then 1.0, 0.4, 0.3: closeness 0, .9, .96, .97 -> 95% from step 2.
    assert steps_to_95([0, 1, 2, 3], [10.0, 1.0, 0.4, 0.3], 0.0, alpha=1.0) == 2
    # A history that starts at the first evaluation would take 1.0 as the init value and call
    # nothing converged: refused instead of silently measuring against the wrong baseline.
    with pytest.raises(ValueError, match="start at step 0"):
        steps_to_95([1, 2, 3], [1.0, 0.4, 0.3], 0.0, alpha=1.0)


def test_convergence_settings_are_validated() -> None:
    from ncstudy.config import EvaluationSpec

    clock = EvaluationSpec(convergence={"ewma_alpha": 0.3, "reference_loss": "normface"})
    assert clock.convergence.ewma_alpha == 0.3
    assert EvaluationSpec().convergence.reference_loss == "ce"
    with pytest.raises(ValueError, match="unknown loss 'cee'"):
        EvaluationSpec(convergence={"reference_loss": "cee"})
    with pytest.raises(ValueError, match="ewma_alpha"):
        EvaluationSpec(convergence={"ewma_alpha": 0.0})


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


class FakeMlflow:
    """The few MLflow client calls `log_steps_to_ref` makes, over in-memory runs."""

    def __init__(self, trials: dict, histories: dict) -> None:
        from ncstudy import tracking

        self.trials, self.histories, self.logged = trials, histories, {}
        self.runs = [
            SimpleNamespace(
                info=SimpleNamespace(run_id=key, status="FINISHED"),
                data=SimpleNamespace(
                    tags={tracking.TRIAL_KEY_TAG: key},
                    metrics={f"nc/{m}": v[-1] for m, v in histories[key].items()},
                ),
            )
            for key in trials
        ]

    def search_runs(self, experiment_ids, max_results=None):  # noqa: ANN001
        return self.runs

    def download_artifacts(self, run_id, path, dst):  # noqa: ANN001
        out = Path(dst) / path
        out.write_text(yaml.safe_dump(self.trials[run_id].model_dump(mode="json")))
        return str(out)

    def get_metric_history(self, run_id, key):  # noqa: ANN001
        values = self.histories[run_id][key.removeprefix("nc/")]
        return [SimpleNamespace(step=s, timestamp=s, value=v) for s, v in enumerate(values)]

    def set_tag(self, run_id, key, value) -> None:  # noqa: ANN001
        self.logged.setdefault(run_id, {})[key] = value

    def log_batch(self, run_id, metrics) -> None:  # noqa: ANN001
        self.logged.setdefault(run_id, {}).update({m.key: m.value for m in metrics})


def test_steps_to_ref_uses_the_studys_convergence_settings() -> None:
    """ce reaches normface's converged nc1 (0.2) at step 1 unsmoothed, at step 2 with the
    default EWMA (ce 1, .915, .8385 against normface's final .875): the study's alpha (1.0) and
    reference loss (normface) decide."""
    from ncstudy.config import expand, parse_study
    from ncstudy.convergence_ref import REFERENCE_TAG, log_steps_to_ref

    study = {
        "name": "clock",
        "dataset": {"name": "digits"},
        "model": {"name": "small_cnn"},
        "train": {"epochs": 2, "warmup_epochs": 0},
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "evaluation": {"convergence": {"ewma_alpha": 1.0, "reference_loss": "normface"}},
    }
    trials = {t.key: t for t in expand(parse_study(study))}
    ce = next(k for k, t in trials.items() if t.loss == "ce")
    nf = next(k for k, t in trials.items() if t.loss == "normface")
    histories = {ce: {"nc1": [1.0, 0.15, 0.15]}, nf: {"nc1": [1.0, 0.5, 0.2]}}
    mlf = FakeMlflow(trials, histories)
    log_steps_to_ref(mlf, "exp", list(trials))
    assert mlf.logged[ce][REFERENCE_TAG] == nf
    assert mlf.logged[ce]["steps_to_ref/nc1"] == 1.0
    assert mlf.logged[nf]["steps_to_ref/nc1"] == 2.0  # the reference reaches itself at the end
    # Explicit arguments still override (the report recomputes with them for plain histories).
    mlf = FakeMlflow(trials, histories)
    log_steps_to_ref(mlf, "exp", list(trials), alpha=0.1)
    assert mlf.logged[ce]["steps_to_ref/nc1"] == 2.0
