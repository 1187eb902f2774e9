"""The per-worker training loop: data -> encoder -> loss -> SGD, epochs, evaluation, checkpoints.

The same function runs in a Ray Train worker, in a single-worker Tune trial and in a plain
process; only the WorkerContext differs. Every rank reports once per epoch (Ray hangs otherwise);
metrics are all-reduced before rank 0 reports them and logs them to MLflow.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ncstudy.context import WorkerContext
from ncstudy.spec import TrialSpec

# Metrics the convergence clock follows (spec/metrics.md, the source paper's Table 7).
CLOCK_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "nc1",
)


class Network(nn.Module):
    """Encoder + loss module (which owns the classifier/projection head) as one DDP unit."""

    def __init__(self, encoder: nn.Module, criterion: nn.Module):
        super().__init__()
        self.encoder, self.criterion = encoder, criterion

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Any:
        h = self.encoder(x)
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.criterion(h.float(), y), h


class MultiView(Dataset):
    """V independently augmented views of each sample, stacked: (V, C, H, W)."""

    def __init__(self, dataset: Dataset, views: int):
        self.dataset, self.views = dataset, views

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        samples = [self.dataset[i] for _ in range(self.views)]
        return torch.stack([s[0] for s in samples]), samples[0][1]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf: the trial is recorded as failed, not retried."""


def lr_lambda(trial: TrialSpec, steps_per_epoch: int) -> Any:
    """Multiplier of the effective lr at optimiser step s: linear warmup from
    `warmup_start_factor`, then cosine decay to `min_lr_factor`."""
    t = trial.train
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    total = t.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return t.warmup_start_factor + (1 - t.warmup_start_factor) * step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return t.min_lr_factor + (1 - t.min_lr_factor) * cosine

    return factor


def seed_everything(seed: int) -> None:
    """Seed torch and numpy (augmentation RNG); called at each epoch start for exact resume."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_loop(trial: TrialSpec, ctx: WorkerContext, run: dict[str, Any] | None = None) -> None:
    """Train one trial on this worker. `run` holds the MLflow tracking URI and run id (rank 0
    logs there); without it nothing is logged (tests)."""
    from ncstudy.data import build_data
    from ncstudy.evaluate.passes import accuracy, all_reduce_sum, shard_loader
    from ncstudy.losses import build_loss
    from ncstudy.models import build_model

    threads = max(1, int(trial.resources.cpus_per_worker))
    torch.set_num_threads(int(os.environ.get("NCSTUDY_THREADS", threads)))
    use_gpu = trial.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if use_gpu else "cpu")
    seed_everything(trial.seed)  # identical initial weights on every rank

    data = build_data(trial.dataset, trial.seed)
    encoder = build_model(trial.model, data.input_shape)
    criterion = build_loss(
        trial.loss,
        trial.loss_params,
        feature_dim=encoder.feature_dim,
        num_classes=data.num_classes,
        seed=trial.seed,
    )
    net: nn.Module = Network(encoder, criterion).to(device)
    if ctx.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if use_gpu else None
        )
    core: Network = net.module if ctx.world_size > 1 else net  # type: ignore[assignment]

    if trial.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {trial.batch_size} is not divisible by {ctx.world_size} workers"
        )
    per_rank = trial.batch_size // ctx.world_size
    views = criterion.num_views
    if data.train_loader is not None:  # loader: ffcv (same order as DistributedSampler)
        loader = sampler = data.train_loader(ctx.rank, ctx.world_size, per_rank, trial.seed, views)
    else:
        # SCL views use the contrastive augmentation (colour jitter, grayscale) when the
        # dataset has one; every dataset[i] call draws a fresh augmentation
        train_set = (
            data.train if views == 1 else MultiView(data.train_contrastive or data.train, views)
        )
        sampler = DistributedSampler(
            train_set, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=trial.seed
        )
        loader = DataLoader(
            train_set,
            batch_size=per_rank,
            sampler=sampler,
            drop_last=True,
            pin_memory=use_gpu,
            num_workers=trial.dataset.num_workers,
            persistent_workers=trial.dataset.num_workers > 0,
        )
    if len(loader) == 0:
        raise ValueError(
            f"batch_size {trial.batch_size} is larger than the training set "
            f"({len(data.train)} samples); lower grid.batch_size"
        )
    ev = trial.evaluation
    train_eval = shard_loader(data.train_eval, ctx.rank, ctx.world_size, ev.eval_batch_size)
    val = shard_loader(data.val, ctx.rank, ctx.world_size, ev.eval_batch_size)
    test = shard_loader(data.test, ctx.rank, ctx.world_size, ev.eval_batch_size)

    t = trial.train
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=trial.lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(trial, len(loader)))
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp and use_gpu)

    state = ctx.load_state()
    history: dict[str, list[tuple[int, float]]] = {}
    best_val, start_epoch = -1.0, 1
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best_val, start_epoch = state["history"], state["best_val"], state["epoch"] + 1

    mlf = None
    if run is not None and ctx.is_main:
        from ncstudy import tracking

        mlf = tracking.client(run["tracking_uri"])

    # Prototype classifiers (SCL fp) only exist after a pass over the training set: no running
    # training accuracy for them; their accuracy comes from the evaluations.
    track_train_acc = not criterion.needs_class_means
    for epoch in range(start_epoch, t.epochs + 1):
        seed_everything(hash((trial.seed, epoch, ctx.rank)) % 2**31)
        sampler.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64)  # loss*n, n, correct, skipped anchors
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if criterion.num_views > 1:  # (B, V, ...) -> view-major (V*B, ...)
                x = x.transpose(0, 1).flatten(0, 1)
                y = y.repeat(criterion.num_views)
            with torch.autocast(device_type=device.type, enabled=t.amp and use_gpu):
                out, h = net(x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out.loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            correct = 0.0
            if track_train_acc:
                with torch.no_grad():
                    correct = float((core.criterion.scores(h.detach()).argmax(1) == y).sum())
            batch_stats = [float(out.loss.detach()) * len(y), len(y), correct, out.skipped_anchors]
            sums += torch.tensor(batch_stats, dtype=torch.float64)
        loss_sum, n, correct, skipped = all_reduce_sum(sums.tolist(), device)
        epoch_seconds = time.perf_counter() - started
        train_loss = loss_sum / n
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": train_loss,
            **({"train/acc1": correct / n} if track_train_acc else {}),
            "loss/skipped_anchors": skipped,
            "train/lr": scheduler.get_last_lr()[0],
            "perf/epoch_seconds": epoch_seconds,
            "perf/samples_per_second": n / epoch_seconds,
        }
        if not math.isfinite(train_loss):
            # Deterministic failure: report it (all ranks, same count) and stop, no retry.
            metrics.update(
                status="failed", reason=f"training loss is {train_loss} at epoch {epoch}"
            )
            _log(mlf, run, metrics, epoch)
            ctx.report(_tune_view(metrics))
            return
        checkpoint = None
        evaluated = epoch % ev.every == 0 or epoch == t.epochs
        if evaluated:
            loaders = {"train": train_eval, "val": val, "test": test}
            metrics.update(_evaluate(core, trial, data.num_classes, loaders, device, epoch))
            for name in CLOCK_METRICS:
                if f"nc/{name}" in metrics:
                    history.setdefault(name, []).append((epoch, metrics[f"nc/{name}"]))
        elif not criterion.needs_class_means:
            # validation accuracy every epoch (cheap: forward only on the small split) so that
            # schedulers and pruners see it; prototype classifiers only exist after an evaluation
            metrics["val/acc1"] = accuracy(core.encoder, criterion, val, device)
        if "val/acc1" in metrics:
            best_val = max(best_val, metrics["val/acc1"])
            metrics["best/val_acc1"] = best_val
        if evaluated:
            checkpoint = {
                "model": core.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "history": history,
                "best_val": best_val,
                "trial": trial.model_dump(mode="json"),
            }
        if epoch == t.epochs:
            metrics.update(_summary(metrics, history, data.num_classes))
            metrics["status"] = "finished"
        _log(mlf, run, metrics, epoch)
        ctx.report(_tune_view(metrics), state=checkpoint)


def _evaluate(
    core: Network,
    trial: TrialSpec,
    num_classes: int,
    loaders: dict[str, DataLoader],
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    from ncstudy.evaluate.passes import accuracy, nc_pass, probe_accuracies

    ev, enc, crit = trial.evaluation, core.encoder, core.criterion
    out: dict[str, float] = {}
    if ev.nc_metrics or crit.needs_class_means:  # the pass also sets SCL prototypes
        nc = nc_pass(
            enc, crit, loaders["train"], num_classes, device, ev.max_intra_classes, ev.nc_metrics
        )
        out.update({f"nc/{k}": v for k, v in nc.items()})
    out["val/acc1"] = accuracy(enc, crit, loaders["val"], device)
    out["test/acc1"] = accuracy(enc, crit, loaders["test"], device)
    if ev.nc_on_test and ev.nc_metrics:
        nc = nc_pass(enc, crit, loaders["test"], num_classes, device, ev.max_intra_classes)
        out.update({f"test/nc/{k}": v for k, v in nc.items()})
    if crit.needs_class_means and epoch == trial.train.epochs and ev.probes.enabled:
        # SCL: fixed prototypes (fp) are the loss's own rule; lp and nlp are trained probes
        out["val/fp_acc1"], out["test/fp_acc1"] = out["val/acc1"], out["test/acc1"]
        out.update(probe_accuracies(enc, loaders, num_classes, device, ev.probes, trial.seed))
    if epoch == trial.train.epochs:  # downstream evaluations (issue #9): final epoch only
        from ncstudy.data import transforms as tf
        from ncstudy.evaluate.corruptions import corruption_errors
        from ncstudy.evaluate.longtail import (
            is_imbalanced,
            longtail_accuracies,
            shard_class_counts,
        )
        from ncstudy.evaluate.transfer import transfer_accuracies

        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        if ev.longtail.enabled:
            counts = shard_class_counts(loaders["train"], num_classes, device)
            if is_imbalanced(counts):
                out.update(
                    longtail_accuracies(enc, crit, device, ev.longtail, loaders["test"], counts)
                )
        name = trial.dataset.name
        stats = (
            tf.CIFAR100_STATS
            if name.startswith("cifar100")
            else tf.CIFAR10_STATS
            if name.startswith("cifar10")
            else tf.IMAGENET_STATS
        )
        test_set = loaders["test"].dataset.dataset  # the full test set under the rank's Subset
        if ev.transfer is not None:
            size = ev.transfer.image_size or int(test_set[0][0].shape[-1])
            out.update(
                transfer_accuracies(
                    enc,
                    crit,
                    device,
                    ev.transfer,
                    image_size=size,
                    stats=stats,
                    rank=rank,
                    world_size=world,
                    batch_size=ev.eval_batch_size,
                    seed=trial.seed,
                )
            )
        if ev.corruptions is not None:
            out.update(
                corruption_errors(
                    enc,
                    crit,
                    device,
                    ev.corruptions,
                    test_set,
                    rank,
                    world,
                    ev.eval_batch_size,
                    imagenet=name == "imagenet",
                )
            )
    return out


def _summary(
    metrics: dict[str, Any], history: dict[str, list[tuple[int, float]]], num_classes: int
) -> dict[str, float]:
    """Final and best values, and the convergence clock of each tracked NC metric."""
    from ncstudy.metrics import metric_target, steps_to_95

    out = {
        f"final/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and "acc1" in k and "/nc/" not in k
    }
    for name, series in history.items():
        steps, values = zip(*series, strict=True)
        reached = steps_to_95(list(steps), list(values), metric_target(name, num_classes))
        if reached is not None:
            out[f"steps_to_95/{name}"] = float(reached)
    return out


def _tune_view(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune sees: the scalar metrics (its result logs stay small) plus the status."""
    keep = ("epoch", "train/", "val/", "test/acc1", "best/", "final/", "perf/", "status", "reason")
    return {k: v for k, v in metrics.items() if k.startswith(keep)}


def _log(mlf: Any, run: dict[str, Any] | None, metrics: dict[str, Any], epoch: int) -> None:
    if mlf is not None and run is not None:
        from ncstudy import tracking

        tracking.log_metrics(mlf, run["run_id"], metrics, step=epoch)


def ray_train_entry(config: dict[str, Any]) -> None:
    """Entry point of a Ray Train worker (TorchTrainer's train_loop_per_worker)."""
    from ncstudy.context import RayTrainContext

    train_loop(TrialSpec.model_validate(config["trial"]), RayTrainContext(), config["run"])
    if dist.is_initialized():
        dist.barrier()
