"""The paper-004 recipe (ncstudy/recipe.py) in the worker loop: the multi-step schedule by
fractions of training, gradient-norm clipping, and the test accuracy of the best-validation
epoch (its resume from a checkpoint included); and the schema's checks of their fields."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import ncstudy.recipe as recipe
from ncstudy.config import SpecError, expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.train import lr_lambda, train_loop

torch.set_num_threads(1)


def study(evaluation: dict | None = None, **train: object) -> dict:
    return {
        "name": "recipe",
        "dataset": {"name": "digits", "image_size": 8, "val_fraction": 0.1},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": 4, "lr": 0.2, "warmup_epochs": 0, **train},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64]},
        "evaluation": {
            "every": 1,
            "nc_metrics": False,
            "longtail": {"enabled": False},
            **(evaluation or {}),
        },
    }


def trial(evaluation: dict | None = None, **train: object):
    return expand(parse_study(study(evaluation, **train)))[0]


PAPER = {"lr_schedule": "multistep", "lr_milestones": [3 / 7, 5 / 7], "lr_gamma": 0.1}


def test_multistep_decays_at_fractions_of_the_training_steps() -> None:
    f = lr_lambda(trial(epochs=7, **PAPER), steps_per_epoch=10)  # 70 steps: decays at 30, 50
    assert [f(s) for s in (0, 29, 30, 49, 50, 69)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01], rel=1e-12
    )


def test_multistep_after_a_linear_warmup() -> None:
    t = trial(epochs=10, warmup_epochs=2, warmup_start_factor=0.1, **PAPER)
    f = lr_lambda(t, steps_per_epoch=5)  # 50 steps: warmup 10, decays at round(21.4), round(35.7)
    assert f(0) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    assert [f(s) for s in (10, 20, 21, 35, 36)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr_milestones": [0.5]}, "lr_milestones applies to lr_schedule: multistep only"),
        ({"lr_schedule": "multistep"}, "multistep needs fractions of training"),
        ({"lr_schedule": "multistep", "lr_milestones": [0.5, 1.0]}, r"in \(0, 1\)"),
        ({"lr_schedule": "multistep", "lr_milestones": [0.7, 0.3]}, "strictly increasing"),
        ({"grad_clip_norm": 0}, "grad_clip_norm"),
    ],
)
def test_schema_refuses_a_bad_recipe(train: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_study(study(**train))


def test_test_at_best_val_needs_a_validation_split() -> None:
    spec = study({"test_at_best_val": True})
    spec["dataset"]["val_fraction"] = 0.0
    with pytest.raises(SpecError, match="test_at_best_val"):
        parse_study(spec)


def _net_with_gradient(grad: list[float]) -> nn.Module:
    net = nn.Linear(len(grad) - 1, 1)
    net.weight.grad = torch.tensor([grad[:-1]])
    net.bias.grad = torch.tensor(grad[-1:])
    return net


def test_clipping_scales_the_global_norm_to_the_threshold() -> None:
    net = _net_with_gradient([3.0, 0.0, 4.0])  # global norm 5 over weight and bias together
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    assert recipe.clip_gradients(net, opt, scaler, 2.0) == pytest.approx(5.0)
    grads = torch.cat([net.weight.grad.flatten(), net.bias.grad])
    assert grads.tolist() == pytest.approx([3 * 2 / 5, 0.0, 4 * 2 / 5], rel=1e-5)
    assert recipe.clip_gradients(net, opt, scaler, 10.0) == pytest.approx(2.0, rel=1e-5)
    assert torch.cat([net.weight.grad.flatten(), net.bias.grad]).norm() == pytest.approx(2.0)
    assert recipe.clip_gradients(net, opt, scaler, None) is None


def test_best_val_keeps_the_earliest_best_epoch_and_measures_test_only_then() -> None:
    best, calls = recipe.BestVal(), []

    def test_pass() -> float:
        calls.append(1)
        return 0.5 + len(calls) / 10

    best_val = -1.0
    seen = []
    for epoch, val, test in [(1, 0.4, None), (2, 0.6, 0.7), (3, 0.6, None), (4, 0.5, None)]:
        m = {"epoch": epoch, "val/acc1": val, **({"test/acc1": test} if test else {})}
        recipe.track_best_val(best, best_val, m, test_pass)
        best_val = max(best_val, val)
        seen.append((m[recipe.TEST_AT_BEST_VAL], m[recipe.BEST_VAL_EPOCH]))
    # epoch 1: a test pass (0.6); epoch 2: its evaluated test/acc1; a tie (3) keeps epoch 2
    assert seen == [(0.6, 1), (0.7, 2), (0.7, 2), (0.7, 2)]
    assert len(calls) == 1


class Interrupt(Exception):
    pass


class StopAfter(LocalContext):
    """Dies right after its n-th report (as a killed worker would)."""

    def __init__(self, checkpoint_dir: Path, n: int):
        super().__init__(checkpoint_dir)
        self.n = n

    def report(self, metrics, state=None):  # noqa: ANN001
        super().report(metrics, state)
        if len(self.reports) == self.n:
            raise Interrupt


def test_loop_logs_the_test_accuracy_of_the_best_val_epoch_and_resumes_it(tmp_path: Path) -> None:
    t = trial({"test_at_best_val": True, "every": 2}, epochs=4, grad_clip_norm=2.0, **PAPER)
    straight = LocalContext(tmp_path / "a")
    train_loop(t, straight)
    reports = [r for r in straight.reports if "epoch" in r]
    vals = [r["val/acc1"] for r in reports]
    best_epoch = vals.index(max(vals)) + 1  # the earliest best
    last = straight.reports[-1]
    assert last[recipe.BEST_VAL_EPOCH] == best_epoch
    assert last["final/test_acc1_at_best_val"] == last[recipe.TEST_AT_BEST_VAL]
    if "test/acc1" in reports[best_epoch - 1]:  # an evaluation epoch: its own test accuracy
        assert last[recipe.TEST_AT_BEST_VAL] == reports[best_epoch - 1]["test/acc1"]
    assert 0 <= last[recipe.TEST_AT_BEST_VAL] <= 1 and math.isfinite(last["train/loss"])
    # train/lr after each epoch's last step: 4 epochs of S steps decay at 12S/7 and 20S/7
    lrs = [r["train/lr"] for r in reports]
    assert lrs == pytest.approx([t.lr, t.lr * 0.1, t.lr * 0.01, t.lr * 0.01])
    # dies after epoch 3 (last checkpoint: epoch 2); the resumed run ends with the same values
    with pytest.raises(Interrupt):
        train_loop(t, StopAfter(tmp_path / "b", n=3))
    resumed = LocalContext(tmp_path / "b")
    train_loop(t, resumed)
    for key in (recipe.TEST_AT_BEST_VAL, recipe.BEST_VAL_EPOCH, "train/loss"):
        assert resumed.reports[-1][key] == last[key], key
