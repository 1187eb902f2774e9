"""The worker loop without Ray: it learns, resumes exactly, fails cleanly on NaN, follows the
lr schedule, and runs as 2 gloo workers with identical reports on both ranks."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ncstudy.context import LocalContext
from ncstudy.spec import expand, parse_study
from ncstudy.train import lr_lambda, train_loop


def tiny_trial(loss: str = "ce", **train: object):
    study = {
        "name": "loop",
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": 4, "lr": 0.2, "warmup_epochs": 1, **train},
        "losses": [{"name": loss}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "evaluation": {"every": 2},
    }
    return expand(parse_study(study))[0]


def test_loop_learns_and_reports_every_epoch() -> None:
    trial = tiny_trial()
    ctx = LocalContext()
    train_loop(trial, ctx)
    assert [r["epoch"] for r in ctx.reports] == [1, 2, 3, 4]
    losses = [r["train/loss"] for r in ctx.reports]
    assert losses[-1] < 0.5 * losses[0]
    last = ctx.reports[-1]
    assert last["status"] == "finished"
    assert last["final/val_acc1"] > 0.5  # 10 classes: chance is 0.1
    assert all("val/acc1" in r for r in ctx.reports)  # validation accuracy: every epoch
    assert "test/acc1" in ctx.reports[1] and "test/acc1" not in ctx.reports[0]  # every 2


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


@pytest.mark.parametrize("loss", ["ce", "normface"])
def test_resume_from_checkpoint_is_exact(tmp_path: Path, loss: str) -> None:
    trial = tiny_trial(loss)
    straight = LocalContext(tmp_path / "a")
    train_loop(trial, straight)

    first = StopAfter(tmp_path / "b", n=3)  # dies at epoch 3; last checkpoint is epoch 2
    with pytest.raises(Interrupt):
        train_loop(trial, first)
    resumed = LocalContext(tmp_path / "b")
    train_loop(trial, resumed)
    assert [r["epoch"] for r in resumed.reports] == [3, 4]
    for key in ("train/loss", "val/acc1", "final/test_acc1"):
        assert resumed.reports[-1][key] == straight.reports[-1][key], key


def test_scl_trial_reports_fixed_prototypes_and_both_probes() -> None:
    trial = tiny_trial("supcon", epochs=2)
    ctx = LocalContext()
    train_loop(trial, ctx)
    last = ctx.reports[-1]
    assert "val/acc1" not in ctx.reports[0]  # no prototypes before the first evaluation
    assert last["val/fp_acc1"] == last["val/acc1"]  # fp is the loss's own prediction rule
    for name in ("fp", "lp", "nlp"):
        assert 0.1 < last[f"final/test_{name}_acc1"] <= 1.0


def test_nan_loss_fails_the_trial_with_a_reason() -> None:
    trial = tiny_trial(lr=1e9, warmup_epochs=0)
    ctx = LocalContext()
    train_loop(trial, ctx)
    last = ctx.reports[-1]
    assert last["status"] == "failed"
    assert "training loss is" in last["reason"]
    assert len(ctx.reports) < 4


def test_lr_schedule_warmup_then_cosine() -> None:
    trial = tiny_trial(epochs=10, warmup_epochs=2, warmup_start_factor=0.1, min_lr_factor=0.01)
    f = lr_lambda(trial, steps_per_epoch=5)
    assert f(0) == pytest.approx(0.1)
    assert f(5) == pytest.approx(0.1 + 0.9 * 5 / 10)
    assert f(10) == pytest.approx(1.0)  # end of warmup: cosine starts at its peak
    mid = 10 + 20  # halfway through the 40 cosine steps
    assert f(mid) == pytest.approx(0.01 + 0.99 * 0.5)
    assert f(50) == pytest.approx(0.01)
    assert all(f(s) >= f(s + 1) for s in range(10, 50))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, trial_json: dict, out: Path) -> None:
    from ncstudy.spec import TrialSpec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        ctx = LocalContext()
        train_loop(TrialSpec.model_validate(trial_json), ctx)
        torch.save(ctx.reports, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_workers_report_identical_all_reduced_metrics(tmp_path: Path) -> None:
    trial = tiny_trial(epochs=2)
    mp.spawn(_worker, args=(_free_port(), trial.model_dump(mode="json"), tmp_path), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0) == len(r1) == 2
    for a, b in zip(r0, r1, strict=True):
        for key in ("train/loss", "train/acc1"):
            assert a[key] == b[key]
        assert {k: v for k, v in a.items() if k.startswith(("val/", "nc/"))} == {
            k: v for k, v in b.items() if k.startswith(("val/", "nc/"))
        }
    assert math.isfinite(r0[-1]["train/loss"]) and r0[-1]["status"] == "finished"
