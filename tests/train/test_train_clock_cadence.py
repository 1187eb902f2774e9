"""The clock pass in the worker loop (issue 16 §1): its numbers do not change when
`evaluation.every` changes, and it does not change training. Tiny runs on the digits, same seed."""

from __future__ import annotations

import pytest

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.runlog import RunLogger
from ncstudy.train import train_loop


def _run(monkeypatch: pytest.MonkeyPatch, every: int, every_steps: int) -> tuple[list, dict]:
    """(every logged (step, metrics), the final report) of a 3-epoch NONL trial."""
    study = {
        "name": "cadence",
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": 3, "lr": 0.2, "warmup_epochs": 1},
        "losses": [{"name": "nonl"}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "evaluation": {
            "every": every,
            "convergence": {"every_steps": every_steps, "subset_size": 300, "ewma_alpha": 0.2},
        },
    }
    calls: list = []
    monkeypatch.setattr(RunLogger, "log", lambda self, m, step: calls.append((step, dict(m))))
    ctx = LocalContext()
    train_loop(expand(parse_study(study))[0], ctx)
    final = {k: v for step, m in calls for k, v in m.items()}
    return calls, final


def _prefixed(calls: list, prefix: str) -> list:
    return [
        (s, {k: v for k, v in m.items() if k.startswith(prefix)})
        for s, m in calls
        if any(k.startswith(prefix) for k in m)
    ]


def test_the_clock_does_not_depend_on_the_evaluation_cadence(monkeypatch) -> None:
    every1, final1 = _run(monkeypatch, every=1, every_steps=5)
    every3, final3 = _run(monkeypatch, every=3, every_steps=5)
    clock1, clock3 = _prefixed(every1, "clock/"), _prefixed(every3, "clock/")
    assert [s for s, _ in clock1] == list(range(0, int(final1["steps_total"]) + 1, 5))
    assert clock1 == clock3  # the same iterations, the same values
    # the full metrics pass did follow its own cadence
    assert [s for s, _ in _prefixed(every1, "nc/nc1")] == [0, 1, 2, 3]
    assert [s for s, _ in _prefixed(every3, "nc/nc1")] == [0, 3]
    # steps_to_95 is a function of these histories alone: the same keys and values
    clock_keys = {k for k in {**final1, **final3} if k.startswith("steps_to_95/")}
    assert {k: final1.get(k) for k in clock_keys} == {k: final3.get(k) for k in clock_keys}
    # and the clock pass does not touch training: the same losses with it every 5 iterations
    # and with it only at iteration 0
    rare, _ = _run(monkeypatch, every=3, every_steps=10_000)
    assert [s for s, _ in _prefixed(rare, "clock/")] == [0]
    assert _prefixed(rare, "train/loss") == _prefixed(every3, "train/loss")
