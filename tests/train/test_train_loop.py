"""The worker loop without Ray: it learns, resumes exactly (also from checkpoints between
evaluations and from the one saved before the downstream evaluations), fails cleanly on NaN,
follows the lr schedule, logs the NC metrics from step 0 with the convergence clock, and runs as
2 gloo workers with identical reports and NC metrics on both ranks."""

from __future__ import annotations

import itertools
import math
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import ncstudy.train as train_module
from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.evaluate import downstream
from ncstudy.metrics.convergence import NETWORK_CLOCK_METRICS as CLOCK_METRICS
from ncstudy.runlog import RunLogger
from ncstudy.train import lr_lambda, train_loop


def tiny_trial(
    loss: str = "ce", evaluation: dict | None = None, dataset: dict | None = None, **train: object
):
    study = {
        "name": "loop",
        "dataset": {"name": "digits", "image_size": 8, **(dataset or {})},
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": 4, "lr": 0.2, "warmup_epochs": 1, **train},
        "losses": [{"name": loss}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "evaluation": {"every": 2, **(evaluation or {})},
    }
    return expand(parse_study(study))[0]


def epochs(reports: list[dict]) -> list[Any]:
    """The `epoch` of each report (None for the report that only saves the checkpoint before
    the downstream evaluations)."""
    return [r.get("epoch") for r in reports]


class Recorder:
    """Stands in for RunLogger.log and RunLogger.tag: what would go to rank 0's MLflow run."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []
        self.tags: dict[str, str] = {}

    def __call__(self, metrics, step) -> None:  # noqa: ANN001
        self.calls.append((step, dict(metrics)))

    def tag(self, tags) -> None:  # noqa: ANN001
        self.tags.update(tags)

    def install(self, setattr) -> None:  # noqa: ANN001
        # class attributes that are not functions: called without the logger instance
        setattr(RunLogger, "log", self)
        setattr(RunLogger, "tag", self.tag)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one logged metric, the latest value per step."""
        latest = {step: m[key] for step, m in self.calls if key in m}
        return sorted(latest), [latest[s] for s in sorted(latest)]

    def merged(self) -> dict:
        """Every metric's last logged value."""
        out: dict = {}
        for _, m in self.calls:
            out.update(m)
        return out


@pytest.fixture
def logged(monkeypatch) -> Recorder:  # noqa: ANN001
    recorder = Recorder()
    recorder.install(monkeypatch.setattr)
    return recorder


def test_loop_learns_and_reports_every_epoch() -> None:
    trial = tiny_trial()
    ctx = LocalContext()
    train_loop(trial, ctx)
    # digits' class counts differ, so the long-tail evaluation runs after the last epoch: the
    # checkpoint is saved first, by a report without `epoch` (schedulers ignore it)
    assert epochs(ctx.reports) == [1, 2, 3, None, 4]
    reports = [r for r in ctx.reports if "epoch" in r]
    losses = [r["train/loss"] for r in reports]
    assert losses[-1] < 0.5 * losses[0]
    last = ctx.reports[-1]
    assert last["status"] == "finished"
    assert last["final/val_acc1"] > 0.5  # 10 classes: chance is 0.1
    assert all("val/acc1" in r for r in ctx.reports)  # validation accuracy: every epoch
    assert "test/acc1" in reports[1] and "test/acc1" not in reports[0]  # every 2


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


@pytest.mark.parametrize(
    ("loss", "checkpoint_every", "redone"),
    [
        ("ce", None, [3, None, 4]),  # dies at epoch 3; last checkpoint (an evaluation): 2
        ("normface", None, [3, None, 4]),
        ("ce", 1, [None, 4]),  # checkpoints every epoch: epoch 3 (no evaluation) is kept
    ],
)
def test_resume_from_checkpoint_is_exact(
    tmp_path: Path, loss: str, checkpoint_every: int | None, redone: list
) -> None:
    trial = tiny_trial(loss, evaluation={"checkpoint_every": checkpoint_every})
    straight = LocalContext(tmp_path / "a")
    train_loop(trial, straight)

    first = StopAfter(tmp_path / "b", n=3)
    with pytest.raises(Interrupt):
        train_loop(trial, first)
    resumed = LocalContext(tmp_path / "b")
    train_loop(trial, resumed)
    assert epochs(resumed.reports) == redone
    for key in ("train/loss", "val/acc1", "final/test_acc1", "best/val_acc1"):
        assert resumed.reports[-1][key] == straight.reports[-1][key], key


def test_failed_downstream_evaluation_retries_only_itself(
    tmp_path: Path, monkeypatch, logged
) -> None:
    trial = tiny_trial()
    straight = LocalContext(tmp_path / "a")
    train_loop(trial, straight)

    real = downstream.evaluate_downstream

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise Interrupt

    monkeypatch.setattr(downstream, "evaluate_downstream", broken)
    first = LocalContext(tmp_path / "b")
    with pytest.raises(Interrupt):
        train_loop(trial, first)
    assert epochs(first.reports) == [1, 2, 3, None]  # the last epoch's checkpoint is saved
    monkeypatch.setattr(downstream, "evaluate_downstream", real)
    retry = LocalContext(tmp_path / "b")
    train_loop(trial, retry)
    assert len(retry.reports) == 1  # no epoch trained again: only the downstream evaluations
    drop_timing = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa: E731
    assert drop_timing(retry.reports[0]) == drop_timing(straight.reports[-1])
    step, last = logged.calls[-1]  # the last epoch (from the checkpoint) and the long-tail eval
    assert step == 4 and "lt/medium_classes" in last
    assert last["train/loss"] == straight.reports[-1]["train/loss"]


def test_scl_trial_reports_fixed_prototypes_and_both_probes(tmp_path: Path, logged) -> None:
    trial = tiny_trial("supcon", evaluation={"nc_on_test": True}, epochs=2)
    ctx = LocalContext(tmp_path)
    train_loop(trial, ctx)
    last = ctx.reports[-1]
    assert "val/acc1" not in ctx.reports[0]  # no prototypes before the first evaluation
    assert last["val/fp_acc1"] == last["val/acc1"]  # fp is the loss's own prediction rule
    for name in ("fp", "lp", "nlp"):
        assert 0.1 < last[f"final/test_{name}_acc1"] <= 1.0
    # The probes are classifiers too: their weight-dependent NC metrics (and nc4) are logged.
    final = logged.merged()
    for probe in ("lp", "nlp"):
        assert {f"nc/{probe}/{m}" for m in ("nc3", "nc3_cos", "align_weight_mean", "nc4")} <= set(
            final
        )
        assert f"nc/{probe}/nc1" not in final  # feature-only metrics are not repeated
    # nc4 of the prototype rule is computed (second pass), not dropped; tags say how.
    assert "nc/nc4" in final and "test/nc/nc4" in final
    assert logged.tags["ncstudy.nc4_source"] == "second_pass"
    assert logged.tags["ncstudy.test_nc4_source"] == "exact"
    # The prototypes in the checkpoint are the training set's normalised class means: the
    # test-set NC pass does not overwrite them.
    state = ctx.load_state()
    core = _network_from(trial, state)
    data = _data(trial)
    with torch.no_grad():
        z = F.normalize(core.criterion.embed(core.encoder(data.train_eval.images)), dim=1)
        labels = data.train_eval.labels
        means = torch.stack([z[labels == c].double().mean(0) for c in range(10)])
    torch.testing.assert_close(
        state["model"]["criterion.prototypes"], F.normalize(means, dim=1).float(), atol=1e-5, rtol=0
    )


def _data(trial):  # noqa: ANN001, ANN202
    from ncstudy.data import build_data

    return build_data(trial.dataset, trial.seed)


def _network_from(trial, state):  # noqa: ANN001, ANN202
    """The trial's encoder + loss with the checkpoint's weights, in eval mode."""
    from ncstudy.losses import build_loss
    from ncstudy.models import build_model

    encoder = build_model(trial.model, (1, 8, 8))
    criterion = build_loss(
        trial.loss, trial.loss_params, feature_dim=encoder.feature_dim, num_classes=10
    )
    net = train_module.Network(encoder, criterion)
    net.load_state_dict(state["model"])
    return net.eval()


def _clock(steps: list[int], values: list[float], target: float, alpha: float) -> float | None:
    """steps_to_95 computed here from its definition (spec/metrics.md): closeness against the
    value at step 0, EWMA with weight alpha per step (1 - (1 - alpha)^gap per measurement),
    earliest step from which it stays >= 0.95."""
    assert steps[0] == 0
    v = np.asarray(values, dtype=float)
    c = v / target if target else 1 - v / v[0]
    c = np.clip(c, 0, 1)
    smooth, y = [], c[0]
    for i, x in enumerate(c):
        weight = 1 - (1 - alpha) ** (steps[i] - steps[i - 1]) if i else 1.0
        y = y + weight * (x - y)
        smooth.append(y)
    for i in range(len(steps)):
        if all(s >= 0.95 for s in smooth[i:]):
            return float(steps[i])
    return None


def test_nc_metrics_from_step_zero_and_the_clock(logged) -> None:
    clock = {"every_steps": 7, "ewma_alpha": 0.2}
    trial = tiny_trial(evaluation={"every": 1, "nc_on_test": True, "convergence": clock}, epochs=3)
    train_loop(trial, LocalContext())
    first_step, first = logged.calls[0]
    assert first_step == 0  # the metrics pass before the first training step
    assert set(first) == {k for k in first if k.startswith(("nc/", "test/nc/"))} and first
    final = logged.merged()
    assert "test/nc/nc1" in final and "test/nc/erank_inter" in final
    assert logged.tags["ncstudy.nc4_source"] == "exact"
    assert logged.tags["ncstudy.model_selection"] == "best/val_acc1"
    assert logged.series("nc/nc1")[0] == [0, 1, 2, 3]  # the metrics pass: every epoch
    for name in CLOCK_METRICS:  # the clock pass: every 7 iterations, from iteration 0
        steps, values = logged.series(f"clock/{name}")
        assert steps == list(range(0, int(final["steps_total"]) + 1, 7)), name
        target = 9.0 if name in ("erank_inter", "erank_weights") else 0.0
        expected = _clock(steps, values, target, alpha=0.2)
        assert final.get(f"steps_to_95/{name}") == (None if expected is None else expected), name


def test_the_clock_starts_at_initialisation_with_the_configured_alpha(logged, monkeypatch) -> None:
    """Scripted clock values: nc1 10 at init, then 0.1 (closeness 0.99); measured every 2
    iterations with alpha 0.5 per iteration (weight 0.75 per measurement) the EWMA is 0, .7425,
    .928, .9746, ... so steps_to_95 = 6. Measured from the first evaluation instead (init 0.1)
    nc1 would never count as converged."""
    from ncstudy.evaluate import clock

    script = itertools.chain([(10.0, 1.0)], itertools.repeat((0.1, 9.0)))

    def scripted(*args, **kwargs):  # noqa: ANN002, ANN003
        nc1, erank = next(script)
        return {"nc1": nc1, "erank_inter": erank}

    monkeypatch.setattr(clock, "clock_metrics", scripted)
    convergence = {"ewma_alpha": 0.5, "every_steps": 2, "subset_size": 64}
    trial = tiny_trial(evaluation={"every": 1, "convergence": convergence}, epochs=2)
    train_loop(trial, LocalContext())
    final = logged.merged()
    assert final["steps_to_95/nc1"] == 6.0
    assert final["steps_to_95/erank_inter"] == 6.0  # closeness 1/9, then 1: same EWMA path
    assert logged.series("clock/nc1")[0][:4] == [0, 2, 4, 6]


def test_without_a_validation_split_nothing_is_selected_on_val(logged) -> None:
    trial = tiny_trial(dataset={"val_fraction": 0.0}, epochs=2)
    ctx = LocalContext()
    train_loop(trial, ctx)
    assert ctx.reports[-1]["status"] == "finished"
    assert not any(k.startswith(("val/", "best/", "final/val")) for r in ctx.reports for k in r)
    assert not any(k.startswith(("val/", "best/")) for k in logged.merged())
    assert logged.tags["ncstudy.model_selection"].startswith("none: dataset.val_fraction is 0")
    assert ctx.reports[-1]["final/test_acc1"] > 0.1


def test_evaluation_loaders_use_the_dataset_workers(monkeypatch) -> None:
    from ncstudy.evaluate import passes

    seen = []
    real = passes.shard_loader

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003
        seen.append(args[4] if len(args) > 4 else kwargs.get("num_workers", 0))
        return real(*args[:4])  # decode in-process: the test only checks what was asked for

    monkeypatch.setattr(passes, "shard_loader", spy)
    train_loop(tiny_trial(dataset={"num_workers": 1}, epochs=1, warmup_epochs=0), LocalContext())
    assert seen[:3] == [1, 1, 1]  # train (metrics pass), val, test


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
    from ncstudy.config import TrialSpec

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        recorder = Recorder()
        recorder.install(lambda obj, name, value: setattr(obj, name, value))  # on every rank
        ctx = LocalContext()
        train_loop(TrialSpec.model_validate(trial_json), ctx)
        torch.save((ctx.reports, recorder.calls), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_workers_report_identical_all_reduced_metrics(tmp_path: Path) -> None:
    trial = tiny_trial(evaluation={"nc_on_test": True}, epochs=2)
    mp.spawn(_worker, args=(_free_port(), trial.model_dump(mode="json"), tmp_path), nprocs=2)
    (r0, log0), (r1, log1) = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0) == len(r1) == 3  # epochs 1, 2 and the checkpoint before the long-tail eval
    for a, b in zip(r0, r1, strict=True):  # all but the per-rank timings
        assert {k: v for k, v in a.items() if not k.startswith("perf/")} == {
            k: v for k, v in b.items() if not k.startswith("perf/")
        }
    clock0, clock1 = ([c for c in log if "clock/nc1" in c[1]] for log in (log0, log1))
    assert clock0 == clock1 and clock0[0][0] == 0  # the clock pass: gathered, the same on both
    log0, log1 = ([c for c in log if "clock/nc1" not in c[1]] for log in (log0, log1))
    assert [step for step, _ in log0] == [step for step, _ in log1] == [0, 1, 2]
    for (_, a), (_, b) in zip(log0, log1, strict=True):
        nc_a = {k: v for k, v in a.items() if k.startswith(("nc/", "test/nc/"))}
        nc_b = {k: v for k, v in b.items() if k.startswith(("nc/", "test/nc/"))}
        assert nc_a == nc_b
    for step in (0, 2):  # the metrics passes: before training and at the evaluation
        metrics = next(m for s, m in log0 if s == step)
        assert {"nc/nc1", "nc/nc4", "nc/gnc2", "test/nc/nc1"} <= set(metrics)
    assert math.isfinite(r0[-1]["train/loss"]) and r0[-1]["status"] == "finished"


def _blobs(n_per_class: int = 15, seed: int = 5) -> TensorDataset:
    """Four noisy classes in R^6."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat(n_per_class)
    feats = 3 * torch.eye(4, 6)[labels] + torch.randn(len(labels), 6, generator=g)
    return TensorDataset(feats, labels)


def test_nc4_falls_back_to_an_exact_second_pass_when_the_cache_overflows(monkeypatch) -> None:
    from ncstudy.evaluate import passes
    from ncstudy.losses import build_loss

    crit = build_loss("ce", {}, feature_dim=6, num_classes=4, seed=0)
    loader = passes.shard_loader(_blobs(), 0, 1, 16)
    args = (torch.nn.Identity(), crit, loader, 4, torch.device("cpu"), 100)
    exact = passes.nc_pass(*args)
    monkeypatch.setattr(passes, "NC4_CACHE_BYTES", 64)  # smaller than one batch
    fallback = passes.nc_pass(*args)
    assert (exact.nc4_source, fallback.nc4_source) == ("exact", "second_pass")
    # nc4 from its definition: prediction != nearest class mean, on the full feature matrix
    x, y = _blobs().tensors
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    nearest = torch.cdist(x, means).argmin(1)
    with torch.no_grad():
        expected = float((crit.scores(x).argmax(1) != nearest).float().mean())
    assert fallback.metrics["nc4"] == pytest.approx(expected, abs=1e-12)
    assert fallback.metrics == exact.metrics
    assert 0 < expected < 1  # a random linear head disagrees with the nearest mean sometimes


def test_only_the_training_pass_sets_scl_prototypes() -> None:
    from ncstudy.evaluate.passes import nc_pass, shard_loader
    from ncstudy.losses import build_loss

    crit = build_loss("supcon", {"projection": "none"}, feature_dim=6, num_classes=4, seed=0)
    train, test = _blobs(seed=1), _blobs(seed=2)
    test.tensors = (test.tensors[0] + 5.0, test.tensors[1])  # a shifted test set
    cpu = torch.device("cpu")
    nc_pass(
        torch.nn.Identity(), crit, shard_loader(train, 0, 1, 16), 4, cpu, 100, set_prototypes=True
    )
    x, y = train.tensors
    z = F.normalize(x.double(), dim=1)
    means = F.normalize(torch.stack([z[y == c].mean(0) for c in range(4)]), dim=1).float()
    torch.testing.assert_close(crit.prototypes, means)
    result = nc_pass(torch.nn.Identity(), crit, shard_loader(test, 0, 1, 16), 4, cpu, 100)
    torch.testing.assert_close(crit.prototypes, means)  # the test pass left them alone
    assert result.nc4_source == "exact" and "nc4" in result.metrics
