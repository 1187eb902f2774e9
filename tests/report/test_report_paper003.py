"""The paper-003 figures on hand-made trial frames: Theorem 1's bound, the captions' measured
numbers (largest gap to the bound, first step at 100 %), which figures a study gets."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from ncstudy.config import load_study
from ncstudy.report import paper003

REPO = Path(__file__).resolve().parents[2]


def test_bound_is_theorem_1_with_tau_the_inverse_temperature() -> None:
    # K = 100, tau = 1 (temperature 1): log(1 + 99 exp(-100/99))
    assert paper003.normface_bound(100, 1.0) == pytest.approx(
        math.log(1 + 99 * math.exp(-100 / 99))
    )
    # the paper multiplies by tau = 2: temperature 0.5
    assert paper003.normface_bound(10, 0.5) == pytest.approx(math.log(1 + 9 * math.exp(-20 / 9)))


def test_figure3_caption_has_the_largest_gap(tmp_path: Path) -> None:
    rows = []
    for k in (4, 10):
        for t in (1.0, 0.5):
            gap = 1e-3 if (k, t) == (10, 0.5) else 1e-6
            rows.append({"axes": {"ufm.K": k}, "temperature": t, "loss": "normface",
                         "train/loss": paper003.normface_bound(k, t) + gap})  # fmt: skip
    spec = SimpleNamespace(ufm=SimpleNamespace(d=12))
    fig = paper003.figure3(pd.DataFrame(rows), spec, tmp_path)
    assert "largest |loss - bound| 1.00e-03" in fig.caption and fig.path.stat().st_size > 0


def test_learning_curves_caption_says_when_each_loss_fits(tmp_path: Path) -> None:
    done = pd.DataFrame({"key": ["a", "b"], "loss": ["normface", "ce"], "setting": ["s", "s"]})
    hist = pd.DataFrame(
        [("a", "train/acc1", s, v) for s, v in ((1, 0.5), (2, 1.0), (3, 1.0))]
        + [("b", "train/acc1", s, v) for s, v in ((1, 0.2), (2, 0.4), (3, 0.6))]
        + [(k, "nc/nc1", s, 1.0 / s) for k in "ab" for s in (1, 2, 3)],
        columns=["key", "metric", "step", "value"],
    )
    fig = paper003.learning_curves(done, hist, tmp_path, "iteration", "figure5")
    assert "normface: 100 % at step 2" in fig.caption
    assert "ce: 60.0 % at the end" in fig.caption


@pytest.mark.parametrize(
    ("study", "expected"),
    [
        ("paper003_ufm_sphere_2d_cpu", ["paper003_figure1"]),
        ("paper003_ufm_landscape_cpu", ["paper003_figure3"]),
        ("paper003_ufm_speed_cpu", ["paper003_figure5"]),
        ("quickstart", []),
    ],
)
def test_each_study_gets_its_figures(
    study: str, expected: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    drawn: list[str] = []
    for name, figure in [("table1_figure1", "paper003_figure1"), ("figure3", "paper003_figure3"),
                         ("learning_curves", "paper003_figure5")]:  # fmt: skip
        monkeypatch.setattr(
            paper003, name, lambda *a, f=figure, **k: drawn.append(f) or ([] if "1" in f else f)
        )
    spec = load_study(REPO / "studies" / f"{study}.yaml")
    trials = pd.DataFrame({"status": ["FINISHED"] * 2, "loss": ["normface", "ce"]})
    paper003.figures(SimpleNamespace(spec=spec, trials=trials, histories=None), tmp_path)
    assert drawn == expected
