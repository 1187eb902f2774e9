"""The shipped Table 7 study follows the source paper (Appendix E.1 recipe, Table 9's
temperatures, CE as the reference of part II) and clocks in iterations, independently of the
full evaluation's cadence."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncstudy.config import expand, load_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"


def test_convergence_cifar100_follows_appendix_e1_and_table_9() -> None:
    trials = expand(load_study(STUDIES / "convergence_cifar100.yaml"))
    assert {t.loss: t.temperature for t in trials} == {
        "ce": None, "normface": 0.3, "ntce": 0.2, "nonl": 0.1,
    }  # fmt: skip
    for t in trials:  # E.1: CIFAR-100, ResNet-18, 1000 epochs, batch 512, lr 0.2, cosine
        assert t.dataset.name == "cifar100" and t.batch_size == 512
        assert (t.model.name, t.model.width, t.model.feature_dim) == ("resnet18_cifar", 64, 512)
        assert t.train.epochs == 1000 and t.train.warmup_epochs == 0 and t.train.momentum == 0.9
        assert t.lr == pytest.approx(0.2)
        clock = t.evaluation.convergence
        assert clock.reference_loss == "ce"
        # the clock passes come far more often than the full pass (every 50 epochs of ~87
        # iterations): the clock's resolution is every_steps iterations, not 50 epochs
        assert clock.every_steps <= 87 < 87 * t.evaluation.every
