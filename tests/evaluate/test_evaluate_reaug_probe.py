"""The standard (re-augmented) linear probe of Table 14: the cached probe's protocol on fresh
views through the frozen encoder every epoch; `evaluation.probes.augment: both` adds it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ncstudy.config import SpecError, expand, parse_study
from ncstudy.evaluate.passes import shard_loader
from ncstudy.evaluate.probes import probe_accuracy, train_linear_probe
from ncstudy.evaluate.reaug_probe import standard_probe_metrics, train_reaugmented_probe
from ncstudy.losses import build_loss

D, K, N = 5, 3, 30
SPEC = SimpleNamespace(
    epochs=4, lr=0.5, momentum=0.9, weight_decay=1e-3, batch_size=8, milestones=[2], lr_decay=0.2
)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    y = torch.arange(N) % K
    return torch.randn(N, D, generator=gen) + 2 * nn.functional.one_hot(y, D).float(), y


def encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6))  # eval mode must be used


class Jittered(Dataset):
    """The samples plus fresh noise on every read (an augmentation); counts the reads."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.x[i] + 0.3 * torch.randn(D), self.y[i]


def test_without_augmentation_it_is_the_cached_probe() -> None:
    x, y = data()
    enc = encoder()
    probe = train_reaugmented_probe(enc, TensorDataset(x, y), K, SPEC, 7, torch.device("cpu"))
    with torch.no_grad():
        cached_features = enc.eval()(x)
    cached = train_linear_probe(
        cached_features, y, K, normalized=False, epochs=4, lr=0.5, momentum=0.9,
        weight_decay=1e-3, batch_size=8, milestones=(2,), lr_decay=0.2, seed=7,
    )  # fmt: skip
    torch.testing.assert_close(probe.weight, cached.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probe.bias, cached.bias, rtol=1e-5, atol=1e-6)


def test_fresh_views_every_epoch_and_the_encoder_stays_frozen() -> None:
    x, y = data()
    enc, views = encoder(), Jittered(x, y)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    probe = train_reaugmented_probe(enc, views, K, SPEC, 7, torch.device("cpu"))
    assert views.reads == 1 + SPEC.epochs * N  # one read for the feature size, then each epoch
    for k, v in enc.state_dict().items():  # BN running statistics included
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in enc.parameters())
    with torch.no_grad():
        assert probe_accuracy(probe, enc(x), y) > 0.5  # chance is 1/3: it learned


def worker(augment: str) -> SimpleNamespace:
    study = {
        "name": "p",
        "dataset": {"name": "digits"},
        "model": {"name": "small_cnn"},
        "losses": [{"name": "supcon"}],
        "grid": {"temperature": [0.1]},
        "train": {"epochs": 2, "warmup_epochs": 0},
        "evaluation": {"probes": {"epochs": 3, "lr": 0.5, "batch_size": 8, "augment": augment}},
    }
    trial = expand(parse_study(study))[0]
    x, y = data()
    crit = build_loss("supcon", {}, feature_dim=6, num_classes=K)
    loaders = {"test": shard_loader(TensorDataset(x, y), 0, 1, 16)}
    return SimpleNamespace(
        trial=trial,
        core=SimpleNamespace(encoder=encoder(), criterion=crit),
        data=SimpleNamespace(train=TensorDataset(x, y), num_classes=K),
        loaders=loaders,
        device=torch.device("cpu"),
        has_val=False,
    )


def test_the_trainer_hook_runs_only_when_asked_at_the_last_epoch() -> None:
    w = worker("both")
    assert standard_probe_metrics(w, 1) == {}  # not the last epoch
    got = standard_probe_metrics(w, 2)
    assert set(got) == {"test/lp_aug_acc1"}
    x, y = data()
    probe = train_reaugmented_probe(w.core.encoder, w.data.train, K, w.trial.evaluation.probes,
                                    w.trial.seed, w.device)  # fmt: skip
    with torch.no_grad():
        assert got["test/lp_aug_acc1"] == probe_accuracy(probe, w.core.encoder(x), y)
    assert standard_probe_metrics(worker("cached"), 2) == {}  # the default: cached only


def test_augment_option_is_validated() -> None:
    study = {"name": "p", "dataset": {"name": "digits"}, "losses": [{"name": "ce"}]}
    assert parse_study(study).evaluation.probes.augment == "cached"
    with pytest.raises(SpecError, match="augment"):
        parse_study({**study, "evaluation": {"probes": {"augment": "always"}}})
