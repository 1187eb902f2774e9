"""The shipped paper-004 studies follow its recipe (section 4 of "Are All Losses Created
Equal"): the four losses with its parameters, SGD 0.1 / 0.9 / 5e-4, decay x0.1 at 3/7 and 5/7
of the iterations, clipping at 2, 10 % validation, best-validation test accuracy, the padded
crop, WideResNet widths 0.25-2 with d fixed, 3 seeds; the UFM study is regularised, K < d."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncstudy.config import expand, load_study
from ncstudy.train import lr_lambda

STUDIES = Path(__file__).resolve().parents[2] / "studies"
PARAMS = {
    "ce": {},
    "ls": {"alpha": 0.1},
    "focal": {"gamma": 3.0},
    "mse": {"kappa": 1.0, "beta": 15.0},
}


@pytest.mark.parametrize(
    ("name", "model", "d"),
    [
        ("losses_equal_cifar10", "wide_resnet50_cifar", 2048),
        ("losses_equal_cifar100", "wide_resnet50_cifar", 2048),
        ("losses_equal_miniimagenet", "wide_resnet18", 512),
    ],
)
def test_paper_scale_studies_follow_the_recipe(name: str, model: str, d: int) -> None:
    trials = expand(load_study(STUDIES / f"{name}.yaml"))
    assert {t.loss: dict(t.loss_params) for t in trials} == PARAMS
    assert {t.seed for t in trials} == {0, 1, 2}
    assert {t.model.width / 64 for t in trials} == {0.25, 0.5, 1.0, 2.0}
    assert max(t.train.epochs for t in trials) == 800
    for t in trials:
        assert (t.model.name, t.model.feature_dim) == (model, d)
        tr = t.train
        assert (t.lr, tr.momentum, tr.weight_decay, tr.grad_clip_norm) == (0.1, 0.9, 5e-4, 2.0)
        assert tr.lr_milestones == pytest.approx([3 / 7, 5 / 7], abs=1e-5) and tr.lr_gamma == 0.1
        assert (t.dataset.val_fraction, t.dataset.crop) == (0.1, "padded")
        assert t.evaluation.test_at_best_val and t.batch_size == 128
    longest = max(trials, key=lambda t: t.train.epochs)
    f = lr_lambda(longest, steps_per_epoch=352)  # 45,000 images / 128
    total = 800 * 352
    assert f(int(total * 3 / 7) - 1) == 1.0 and f(int(total * 3 / 7) + 1) == pytest.approx(0.1)
    assert f(int(total * 5 / 7) + 1) == pytest.approx(0.01) and f(total - 1) == pytest.approx(0.01)


def test_cpu_and_ufm_studies_keep_the_losses_and_the_theorems_assumptions() -> None:
    cpu = expand(load_study(STUDIES / "losses_equal_cpu.yaml"))
    assert {t.loss: dict(t.loss_params) for t in cpu} == PARAMS
    assert {t.model.feature_dim for t in cpu} == {64} and len({t.model.width for t in cpu}) == 2
    assert all(t.evaluation.test_at_best_val and t.train.grad_clip_norm == 2.0 for t in cpu)
    ufm = expand(load_study(STUDIES / "ufm_losses_equal.yaml"))
    assert {t.loss: dict(t.loss_params) for t in ufm} == PARAMS
    assert all(t.ufm.variant == "regularized" and t.ufm.d > t.ufm.K for t in ufm)
