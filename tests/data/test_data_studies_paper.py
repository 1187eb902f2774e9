"""The shipped studies against Appendix E of the source paper: the ImageNet-100 study, the
per-GPU negatives of NTCE / NONL on ImageNet, the long-tail ratios, and every deviation flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncstudy.config import expand, load_study

STUDIES = Path(__file__).resolve().parents[2] / "studies"
PAPER_RECIPES = ("temp_batch_cifar", "seeds_cifar", "seeds_cifar10", "longtail_cifar")
PAPER_RECIPES += ("batch_imagenet", "imagenet100")


def by_loss(name: str) -> dict:
    return {t.loss: t for t in expand(load_study(STUDIES / f"{name}.yaml"))}


def test_imagenet100_follows_appendix_e() -> None:
    study = load_study(STUDIES / "imagenet100.yaml")
    trials = by_loss("imagenet100")
    assert set(trials) == {"ce", "etf_dr", "normface", "ntce", "nonl", "supcon"}
    assert study.dataset.name == "imagenet100" and study.resources.workers_per_trial == 4
    for loss, t in trials.items():  # 500 epochs, batch 1024 = 256 per GPU x 4, ResNet-50
        assert t.batch_size == 1024 and t.train.epochs == 500 and t.seed == 42
        assert t.model.name == "resnet50" and t.model.sync_bn and t.train.warmup_epochs == 10
        lr = 0.8 if loss == "supcon" else 0.1
        assert t.lr == pytest.approx(lr * 1024 / 256)
        assert t.lr * t.train.warmup_start_factor == pytest.approx(0.01)  # from 0.01
        assert t.temperature == (
            0.1 if loss == "supcon" else None if loss in ("ce", "etf_dr") else 0.2
        )
    for loss in ("ntce", "nonl"):  # the paper's per-GPU pool
        assert trials[loss].loss_params["negatives"] == "local"
    probes = study.evaluation.probes  # E.2 phase 2, ImageNet-100; and Table 14's standard LP
    assert (probes.epochs, probes.lr, probes.milestones, probes.augment) == (
        90, 2.0, [30, 60, 80], "both"
    )  # fmt: skip


def test_batch_imagenet_contrasts_per_gpu_like_the_paper() -> None:
    study = load_study(STUDIES / "batch_imagenet.yaml")
    trials = expand(study)
    for t in trials:
        if t.loss in ("ntce", "nonl"):
            assert t.loss_params["negatives"] == "local"
    per_gpu = {t.batch_size // study.resources.workers_per_trial for t in trials}
    assert min(per_gpu) == 256  # "256 per GPU with 8 GPUs" at batch 2048


def test_longtail_ratios_are_the_ones_the_papers_ce_column_points_to() -> None:
    ratios = [
        t.dataset.imbalance_ratio for t in expand(load_study(STUDIES / "longtail_cifar.yaml"))
    ]
    assert sorted(set(ratios), reverse=True) == [0.1, 0.02, 0.01]


@pytest.mark.parametrize("name", PAPER_RECIPES)
def test_every_paper_recipe_flags_its_deviations(name: str) -> None:
    text = (STUDIES / f"{name}.yaml").read_text()
    assert "Deviations from Appendix E and their expected effect:" in text
    study = load_study(STUDIES / f"{name}.yaml")
    if study.dataset.val_fraction > 0:  # the hold-out is named with its effect
        assert "held out for validation" in text and "Expected" in text
    if "cifar" in name:  # the text's lr at batch 512 against the authors' code
        assert "0.4 at 512" in text
