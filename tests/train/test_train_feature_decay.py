"""train.feature_decay (the explicit feature penalty of the regularised formulation that Yaras
et al. 2022 compare with normalised features): its value, and one SGD step of the worker loop
against the same step computed here with the penalty written out."""

from __future__ import annotations

import copy

import pytest
import torch

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.losses.feature_penalty import feature_penalty
from ncstudy.train import build_optimisation, build_worker, train_step


def test_penalty_is_half_lambda_times_the_mean_squared_norm() -> None:
    h = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert float(feature_penalty(h, 0.2)) == pytest.approx(0.5 * 0.2 * (25 + 1) / 2)
    assert feature_penalty(h, 0.0) == 0.0


def trial(feature_decay: float):
    study = {
        "name": "fd",
        "dataset": {"name": "digits", "image_size": 8, "augment": False},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 8},
        "train": {"epochs": 1, "lr": 0.5, "momentum": 0.0, "weight_decay": 0.0},
        "losses": [{"name": "ce", "train": {"feature_decay": feature_decay}}],
        "grid": {"batch_size": [32]},
    }
    return expand(parse_study(study))[0]


def test_one_step_descends_the_loss_plus_the_penalty() -> None:
    lam = 0.3
    t = trial(lam)
    assert t.train.feature_decay == lam
    w = build_worker(t, LocalContext())
    reference = copy.deepcopy(w.core)
    x, y = next(iter(w.loader))
    # by hand: the gradient of CE + lam/2 mean ||h||^2 on a copy, then plain SGD
    out, h = reference(x, y)
    objective = out.loss + 0.5 * lam * (h * h).sum(1).mean()
    objective.backward()
    expected = {n: p.detach() - t.lr * p.grad for n, p in reference.named_parameters()}
    train_step(w, build_optimisation(w), x, y)
    for name, p in w.core.named_parameters():
        assert torch.allclose(p.detach(), expected[name], atol=1e-6), name
    # and the penalty moved the encoder: without it the step differs
    w0 = build_worker(trial(0.0), LocalContext())
    train_step(w0, build_optimisation(w0), x, y)
    moved = [
        not torch.allclose(a, b, atol=1e-6)
        for a, b in zip(w0.core.encoder.parameters(), w.core.encoder.parameters(), strict=True)
    ]
    assert any(moved)
