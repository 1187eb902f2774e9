"""The per-worker training loop: data -> encoder -> loss -> SGD, epochs, evaluation, checkpoints.

The same function runs in a Ray Train worker, in a single-worker Tune trial and in a plain
process; only the WorkerContext differs. Every rank makes the same reports (Ray hangs otherwise):
one per epoch, plus, when downstream evaluations follow the last epoch, one without `epoch`
that saves the checkpoint before them. Metrics are all-reduced before rank 0 reports them and
logs them to MLflow; the NC metrics are logged from step 0 (before training) for the clock.
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
from ncstudy.evaluate import downstream as ds
from ncstudy.metrics.convergence import record_history
from ncstudy.config import TrialConfigError, TrialSpec

# Metrics the convergence clock follows (spec/metrics.md, the source paper's Table 7).
CLOCK_METRICS = (
    "erank_intra",
    "erank_inter",
    "erank_weights",
    "align_weight_mean",
    "align_weight_inst",
    "nc1",
)
# Run tags: what the model selection uses, and where each pass's nc4 came from (see nc_pass).
SELECTION_TAG = "ncstudy.model_selection"
NO_SELECTION = (
    "none: dataset.val_fraction is 0 (no validation split); no val/ or best/ metrics are "
    "logged, and selecting on test/ metrics would leak the test set"
)
NC4_SOURCE_TAG = "ncstudy.nc4_source"
TEST_NC4_SOURCE_TAG = "ncstudy.test_nc4_source"


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
        raise TrialConfigError(
            f"batch_size {trial.batch_size} is larger than the training set "
            f"({len(data.train)} samples); lower grid.batch_size"
        )
    ev = trial.evaluation
    workers = trial.dataset.num_workers
    shard = (ctx.rank, ctx.world_size, ev.eval_batch_size, workers)
    loaders = {
        "train": shard_loader(data.train_eval, *shard),
        "val": shard_loader(data.val, *shard, persistent_workers=True),  # read every epoch
        "test": shard_loader(data.test, *shard),
    }
    has_val = len(data.val) > 0  # type: ignore[arg-type]

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

    def snapshot(epoch: int, **extra: Any) -> dict[str, Any]:
        """The self-describing checkpoint of the trial after `epoch`."""
        return {
            "model": core.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "history": history,
            "best_val": best_val,
            "trial": trial.model_dump(mode="json"),
            **extra,
        }

    state = ctx.load_state()
    history: dict[str, list[tuple[int, float]]] = {}
    best_val, start_epoch = -1.0, 1
    final: dict[str, Any] | None = None  # the last epoch's metrics, once it has trained
    pending = False  # resumed from the checkpoint saved before the downstream evaluations
    if state is not None:
        core.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        history, best_val, start_epoch = state["history"], state["best_val"], state["epoch"] + 1
        final = state.get("final_metrics")
        pending = final is not None

    mlf = None
    if run is not None and ctx.is_main:
        from ncstudy import tracking

        mlf = tracking.client(run["tracking_uri"])
    _tag(mlf, run, {SELECTION_TAG: "best/val_acc1" if has_val else NO_SELECTION})

    if state is None and ev.nc_metrics:
        # Step 0 of the convergence clock: closeness to a target of 0 is measured against the
        # value at initialisation, so the metrics pass runs once before the first step.
        init, nc_tags = _nc_evaluation(core, trial, data.num_classes, loaders, device)
        record_history(history, init, 0, CLOCK_METRICS)
        _tag(mlf, run, nc_tags)
        _log(mlf, run, init, 0)

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
        evaluated = epoch % ev.every == 0 or epoch == t.epochs
        if evaluated:
            found, nc_tags = _evaluate(
                core, trial, data.num_classes, loaders, device, epoch, has_val
            )
            metrics.update(found)
            _tag(mlf, run, nc_tags)
            record_history(history, metrics, epoch, CLOCK_METRICS)
        elif has_val and not criterion.needs_class_means:
            # validation accuracy every epoch (cheap: forward only on the small split) so that
            # schedulers and pruners see it; prototype classifiers only exist after an evaluation
            metrics["val/acc1"] = accuracy(core.encoder, criterion, loaders["val"], device)
        if "val/acc1" in metrics:
            best_val = max(best_val, metrics["val/acc1"])
            metrics["best/val_acc1"] = best_val
        if epoch == t.epochs:
            final = metrics
            break
        due = evaluated if ev.checkpoint_every is None else epoch % ev.checkpoint_every == 0
        _log(mlf, run, metrics, epoch)
        ctx.report(_tune_view(metrics), state=snapshot(epoch) if due else None)

    if final is None:  # a restart after the trial had already finished: nothing left to do
        return
    counts, downstream = ds.downstream_plan(trial, data.num_classes, loaders, device)
    if downstream and not pending:
        # Checkpoint before the downstream evaluations: a retry after a failure there redoes
        # only them, not the training since the last checkpoint. (The last epoch's metrics
        # travel in the checkpoint and reach MLflow once, with the downstream results.)
        ctx.report(_pending_view(final), state=snapshot(t.epochs, final_metrics=final))
    if downstream:
        final.update(
            ds.evaluate_downstream(
                core.encoder, core.criterion, trial, data.num_classes, loaders, device, counts
            )
        )
    final.update(_summary(final, history, data.num_classes, ev.convergence.ewma_alpha))
    final["status"] = "finished"
    _log(mlf, run, final, t.epochs)
    ctx.report(_tune_view(final), state=None if downstream else snapshot(t.epochs))


def _nc_evaluation(
    core: Network,
    trial: TrialSpec,
    num_classes: int,
    loaders: dict[str, DataLoader],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, str]]:
    """The NC metrics (`nc/`, `test/nc/`) and their nc4 sources (tags). The training-set pass
    also sets SCL prototypes; the test-set pass never touches the classifier."""
    from ncstudy.evaluate.passes import nc_pass

    ev, enc, crit = trial.evaluation, core.encoder, core.criterion
    train = nc_pass(
        enc,
        crit,
        loaders["train"],
        num_classes,
        device,
        ev.max_intra_classes,
        set_prototypes=True,
        with_metrics=ev.nc_metrics,
    )
    out = {f"nc/{k}": v for k, v in train.metrics.items()}
    if not ev.nc_metrics:
        return out, {}
    tags = {NC4_SOURCE_TAG: train.nc4_source}
    if ev.nc_on_test:
        test = nc_pass(enc, crit, loaders["test"], num_classes, device, ev.max_intra_classes)
        out.update({f"test/nc/{k}": v for k, v in test.metrics.items()})
        tags[TEST_NC4_SOURCE_TAG] = test.nc4_source
    return out, tags


def _evaluate(
    core: Network,
    trial: TrialSpec,
    num_classes: int,
    loaders: dict[str, DataLoader],
    device: torch.device,
    epoch: int,
    has_val: bool,
) -> tuple[dict[str, float], dict[str, str]]:
    """An evaluation: NC metrics, val (if there is a validation split) and test accuracy and,
    at the last epoch of an SCL trial, the lp/nlp probes. Returns the metrics and the run tags
    they come with."""
    from ncstudy.evaluate.passes import accuracy, probe_accuracies

    ev, enc, crit = trial.evaluation, core.encoder, core.criterion
    out: dict[str, float] = {}
    tags: dict[str, str] = {}
    if ev.nc_metrics or crit.needs_class_means:  # the training pass also sets SCL prototypes
        out, tags = _nc_evaluation(core, trial, num_classes, loaders, device)
    if has_val:
        out["val/acc1"] = accuracy(enc, crit, loaders["val"], device)
    out["test/acc1"] = accuracy(enc, crit, loaders["test"], device)
    if crit.needs_class_means and epoch == trial.train.epochs and ev.probes.enabled:
        # SCL: fixed prototypes (fp) are the loss's own rule; lp and nlp are trained probes
        if has_val:
            out["val/fp_acc1"] = out["val/acc1"]
        out["test/fp_acc1"] = out["test/acc1"]
        splits = ("val", "test") if has_val else ("test",)
        out.update(
            probe_accuracies(
                enc,
                loaders,
                num_classes,
                device,
                ev.probes,
                trial.seed,
                splits=splits,
                nc_metrics=ev.nc_metrics,
            )
        )
    return out, tags


def _summary(
    metrics: dict[str, Any],
    history: dict[str, list[tuple[int, float]]],
    num_classes: int,
    alpha: float,
) -> dict[str, float]:
    """Final and best values, and the convergence clock of each tracked NC metric."""
    from ncstudy.metrics import clock_summary

    out = {
        f"final/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and "acc1" in k and "/nc/" not in k
    }
    out.update(clock_summary(history, num_classes, alpha))
    return out


def _tune_view(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune sees: the scalar metrics (its result logs stay small) plus the status."""
    keep = ("epoch", "train/", "val/", "test/acc1", "best/", "final/", "perf/", "status", "reason")
    return {k: v for k, v in metrics.items() if k.startswith(keep)}


def _pending_view(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune sees of the report that saves the checkpoint before the downstream
    evaluations: no `epoch`, so schedulers ignore it (ASHA stops a trial at its report at
    max_t, which must be the final one), and no test/acc1 (one progress line per epoch)."""
    return {k: v for k, v in _tune_view(metrics).items() if k not in ("epoch", "test/acc1")}


def _log(mlf: Any, run: dict[str, Any] | None, metrics: dict[str, Any], step: int) -> None:
    """Log the metrics at `step` on rank 0's MLflow run, if any."""
    if mlf is not None and run is not None:
        from ncstudy import tracking

        tracking.log_metrics(mlf, run["run_id"], metrics, step=step)


def _tag(mlf: Any, run: dict[str, Any] | None, tags: dict[str, str]) -> None:
    """Set tags on rank 0's MLflow run, if any."""
    if mlf is not None and run is not None:
        for key, value in tags.items():
            mlf.set_tag(run["run_id"], key, value)


def ray_train_entry(config: dict[str, Any]) -> None:
    """Entry point of a Ray Train worker (TorchTrainer's train_loop_per_worker)."""
    from ncstudy.context import RayTrainContext

    train_loop(TrialSpec.model_validate(config["trial"]), RayTrainContext(), config["run"])
    if dist.is_initialized():
        dist.barrier()
