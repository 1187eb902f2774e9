"""The shipped evidence study (studies/evidence_cifar10_cpu.yaml, docs/results/): it validates and
expands to the seed-000 comparison it claims, 5 losses x 3 seeds on CIFAR-10."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ncstudy.config import expand, load_study

STUDY = Path(__file__).resolve().parents[2] / "studies" / "evidence_cifar10_cpu.yaml"


def test_evidence_study_is_the_seed_000_comparison() -> None:
    spec = load_study(STUDY)
    trials = expand(spec)
    assert spec.dataset.name == "cifar10" and spec.dataset.download
    assert Counter(t.loss for t in trials) == dict.fromkeys(
        ["ce", "normface", "ntce", "nonl", "supcon"], 3
    )
    assert sorted({t.seed for t in trials}) == [0, 1, 2]
    # Table 7's clock: ~9 iterations per epoch, so a clock pass every few iterations
    assert spec.evaluation.convergence.every_steps <= 5
