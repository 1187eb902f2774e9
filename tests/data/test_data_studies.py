"""The shipped studies follow the source paper's recipes (Appendix E), and a loss's own `train:`
override (SupCon's lr, its warmup) is validated, resolved into its trials and their hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ncstudy.config import SpecError, expand, load_study, parse_study
from ncstudy.run import main

STUDIES = Path(__file__).resolve().parents[2] / "studies"
BASE = {
    "name": "o",
    "train": {"epochs": 10, "lr": 0.2, "base_batch_size": 512},
    "grid": {"batch_size": [256]},
}


def by_loss(trials: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for t in trials:
        out.setdefault(t.loss, []).append(t)
    return out


def test_a_loss_train_override_reaches_only_its_trials() -> None:
    losses = [{"name": "ce"}, {"name": "supcon", "train": {"lr": 0.05, "warmup_epochs": 2}}]
    trials = by_loss(expand(parse_study({**BASE, "losses": losses})))
    (ce,), (supcon,) = trials["ce"], trials["supcon"]
    assert ce.train.lr == 0.2 and ce.lr == pytest.approx(0.1)  # 0.2 x 256/512
    assert supcon.train.lr == 0.05 and supcon.lr == pytest.approx(0.025)
    assert supcon.train.warmup_epochs == 2 and ce.train.warmup_epochs == 0
    assert supcon.train.epochs == 10  # the rest is the study's
    plain = by_loss(expand(parse_study({**BASE, "losses": [{"name": "supcon"}]})))["supcon"][0]
    assert plain.key == supcon.key and plain.config_hash() != supcon.config_hash()
    same = {"name": "supcon", "train": {"lr": 0.2}}  # an override equal to the study's value
    again = expand(parse_study({**BASE, "losses": [same]}))[0]
    assert again.config_hash() == plain.config_hash()  # the resolved trial is what is hashed


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"lrr": 0.1}, "losses.0.train: lrr: unknown field"),
        ({"lr": -1}, "losses.0.train: lr: Input should be greater than 0"),
        ({"lr_scaling": "cube"}, "lr_scaling: Input should be 'linear', 'sqrt' or 'none'"),
        ({"warmup_epochs": 12}, r"losses\[0\] \(supcon\).train: warmup_epochs \(12.0\) must be"),
    ],
)
def test_a_bad_override_names_the_field(override: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_study({**BASE, "losses": [{"name": "supcon", "train": override}]})


def test_an_override_cannot_fight_a_grid_axis_or_a_ufm_study() -> None:
    losses = [{"name": "supcon", "train": {"lr": 0.05}}]
    grid = {"batch_size": [256], "axes": {"train.lr": [0.1, 0.2]}}
    with pytest.raises(SpecError, match="train.lr is also a grid axis"):
        parse_study({**BASE, "losses": losses, "grid": grid})
    ufm = {"name": "u", "model": {"name": "ufm"}, "ufm": {"K": 3, "d": 4}}
    with pytest.raises(SpecError, match="UFM trials take their settings from `ufm:`"):
        parse_study({**ufm, "losses": [{"name": "normface", "train": {"lr": 0.1}}]})


def test_dry_run_shows_the_overridden_lr(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a GPU-cluster study: --address (not contacted by --dry-run) skips this machine's checks
    args = ["--dry-run", "--output", str(tmp_path), "--address", "127.0.0.1:6379"]
    code = main([str(STUDIES / "temp_batch_cifar.yaml"), *args])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    rows = {line.split()[0]: line.split() for line in lines if "-b512-" in line}
    assert rows["supcon-t0.1-b512-cifar10-s0"][5] == "0.05"  # the lr column at batch 512
    assert rows["ce-b512-cifar10-s0"][5] == "0.2"


def test_temp_batch_cifar_follows_appendix_e() -> None:
    study = load_study(STUDIES / "temp_batch_cifar.yaml")
    trials = by_loss(expand(study))
    assert set(trials) == {"ce", "etf_dr", "normface", "ntce", "nonl", "supcon"}
    at512 = {loss: [t for t in ts if t.batch_size == 512][0] for loss, ts in trials.items()}
    for loss, t in at512.items():  # E.1 / E.2: 1000 epochs, cosine, no warmup, ResNet-18
        assert t.train.epochs == 1000 and t.train.warmup_epochs == 0 and t.train.momentum == 0.9
        assert (t.model.name, t.model.width, t.model.feature_dim) == ("resnet18_cifar", 64, 512)
        assert t.lr == pytest.approx(0.05 if loss == "supcon" else 0.2)
    temps = sorted({t.temperature for t in trials["supcon"]})
    assert temps == [0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    probes = study.evaluation.probes  # E.2 phase 2 (without its step decay: see the YAML)
    assert (probes.epochs, probes.lr, probes.momentum, probes.weight_decay) == (100, 5.0, 0.9, 0)


def test_batch_imagenet_follows_appendix_e() -> None:
    study = load_study(STUDIES / "batch_imagenet.yaml")
    trials = by_loss(expand(study))
    for loss, ts in trials.items():
        for t in ts:
            assert t.lr == pytest.approx(0.1 * t.batch_size / 256) and t.seed == 42
            assert t.train.epochs == 500 and t.model.feature_dim == 2048 and t.model.sync_bn
            assert t.train.warmup_epochs == (5 if loss == "supcon" else 10)
            assert t.temperature == (0.1 if loss == "supcon" else None if loss == "ce" else 0.2)
    # warmup from 0.01 (absolute in the authors' code): exact at batch 2048
    at2048 = trials["ce"][0]
    assert at2048.batch_size == 2048
    assert at2048.lr * at2048.train.warmup_start_factor == pytest.approx(0.01)
    probes = study.evaluation.probes
    assert (probes.epochs, probes.lr, probes.weight_decay) == (90, 0.8, 0)


def test_longtail_and_seed_studies_use_the_table_9_and_10_winners() -> None:
    # Table 9 (CIFAR-100, batch 512): NormFace 72.4 at 0.3, NTCE 72.9 at 0.2, NONL 73.6 at 0.1
    for name in ("longtail_cifar.yaml", "seeds_cifar.yaml"):
        temps = {t.loss: t.temperature for t in expand(load_study(STUDIES / name))}
        assert temps["normface"] == 0.3 and temps["ntce"] == 0.2 and temps["nonl"] == 0.1
    # Table 10 (CIFAR-10): NormFace 94.8 at 0.6, NTCE 94.7 at 0.6, NONL 94.9 at 0.2
    temps = {t.loss: t.temperature for t in expand(load_study(STUDIES / "seeds_cifar10.yaml"))}
    assert temps == {"ce": None, "normface": 0.6, "ntce": 0.6, "nonl": 0.2}
    lt = expand(load_study(STUDIES / "longtail_cifar.yaml"))
    assert {t.dataset.imbalance_ratio for t in lt} == {0.1, 0.02, 0.01}  # factors 10, 50, 100
    assert {t.dataset.name for t in lt} == {"cifar10_lt", "cifar100_lt"}
