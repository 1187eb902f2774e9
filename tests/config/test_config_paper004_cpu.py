"""The CPU-sized paper-004 studies on CIFAR-10, CIFAR-100 and miniImageNet keep the paper's recipe
(section 4 of "Are All Losses Created Equal"): the four losses with its parameters, SGD 0.1 /
0.9 / 5e-4, decay x0.1 at 3/7 and 5/7, clipping at 2, 10 % validation, best-validation test
accuracy, the padded crop, 3 seeds, a 2 x 2 width x epochs grid with d fixed by the model; they
read the real data (CIFAR through torchvision's download, miniImageNet from its root) and
flag their deviations."""

from __future__ import annotations

import pytest
from test_config_paper004 import PARAMS, STUDIES  # the GPU studies' test: the paper's losses

from ncstudy.config import expand, load_study


@pytest.mark.parametrize(
    ("name", "dataset", "model", "d"),
    [
        ("losses_equal_cifar10_cpu", "cifar10", "small_cnn", 64),
        ("losses_equal_cifar100_cpu", "cifar100", "small_cnn", 128),
        ("losses_equal_miniimagenet_cpu", "miniimagenet", "wide_resnet18", 512),
    ],
)
def test_cpu_studies_keep_the_recipe(name: str, dataset: str, model: str, d: int) -> None:
    text = " ".join((STUDIES / f"{name}.yaml").read_text().replace("#", " ").split())
    assert "Deviations, flagged:" in text and "not in our copy of the paper" in text
    trials = expand(load_study(STUDIES / f"{name}.yaml"))
    assert len(trials) == 4 * 2 * 2 * 3
    assert {t.loss: dict(t.loss_params) for t in trials} == PARAMS
    assert {t.seed for t in trials} == {0, 1, 2}
    assert len({t.model.width for t in trials}) == 2 and len({t.train.epochs for t in trials}) == 2
    for t in trials:
        assert (t.model.name, t.model.feature_dim, t.dataset.name) == (model, d, dataset)
        tr = t.train
        assert (t.lr, tr.momentum, tr.weight_decay, tr.grad_clip_norm) == (0.1, 0.9, 5e-4, 2.0)
        assert tr.lr_milestones == pytest.approx([3 / 7, 5 / 7], abs=1e-5) and tr.lr_gamma == 0.1
        assert (t.dataset.val_fraction, t.dataset.crop) == (0.1, "padded")
        assert t.evaluation.test_at_best_val
    data = trials[0].dataset
    if dataset != "miniimagenet":  # all the classes, from torchvision's download
        assert data.download and data.classes is None
    else:  # no download exists: the user's ImageFolder root
        assert data.root == "~/data/miniimagenet" and len(data.classes) == 10


@pytest.mark.parametrize(
    "name", ["losses_equal_cifar10", "losses_equal_cifar100", "losses_equal_miniimagenet"]
)
def test_paper_scale_studies_flag_the_assumed_epoch_grid(name: str) -> None:
    """Our copy of the paper names 800 epochs only (Figures 1-2, Figure 3's widest and
    longest cell) and lacks the appendix: the other epoch values are flagged as assumed."""
    text = " ".join((STUDIES / f"{name}.yaml").read_text().replace("#", " ").split())
    deviations = text[text.index("Deviations, flagged:") :]
    assert "not in our copy of the paper" in deviations and "assum" in deviations
    assert max(t.train.epochs for t in expand(load_study(STUDIES / f"{name}.yaml"))) == 800
