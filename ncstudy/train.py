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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ncstudy.checkpoints import RESUMED_TAG
from ncstudy.config import TrialConfigError, TrialSpec
from ncstudy.context import RayTrainContext, WorkerContext
from ncstudy.data import build_data
from ncstudy.data.bundle import DataBundle
from ncstudy.data.random_labels import record_random_labels
from ncstudy.evaluate import downstream as ds
from ncstudy.evaluate import passes, reaug_probe
from ncstudy.evaluate.clock import clock_for_worker
from ncstudy.feature_log import log_features_2d
from ncstudy.finetune import init_encoder
from ncstudy.losses import build_loss
from ncstudy.losses.feature_penalty import feature_penalty
from ncstudy.metrics.convergence import clock_summary
from ncstudy.models import build_model
from ncstudy.recipe import BestVal, clip_gradients, schedule_factor, track_best_val
from ncstudy.runlog import RunLogger, data_metrics, tune_view
from ncstudy.targets import RunTarget

# What Tune sees of a report (runlog.tune_view): scalars and the status, no NC block.
TUNE_KEYS = ("epoch", "train/", "val/", "test/acc1", "best/", "final/", "perf/", "status", "reason")
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
    multistep = schedule_factor(t, steps_per_epoch)  # `lr_schedule: multistep` (ncstudy.recipe)
    if multistep is not None:
        return multistep
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


@dataclass
class Worker:
    """One worker's trial: where it runs, its network (DDP-wrapped when distributed, `core`
    unwrapped), its training batches and its evaluation shards (train un-augmented, val, test)."""

    trial: TrialSpec
    ctx: WorkerContext
    device: torch.device
    data: DataBundle
    net: nn.Module
    core: Network
    loader: Any  # torch DataLoader or FFCV loader: len(), set_epoch via `sampler`
    sampler: Any
    loaders: dict[str, DataLoader]
    clock: Any = None  # the convergence clock's pass (ncstudy.evaluate.clock), set by train_loop

    @property
    def amp(self) -> bool:
        """Mixed precision: asked for and on a GPU."""
        return self.trial.train.amp and self.device.type == "cuda"

    @property
    def has_val(self) -> bool:
        return len(self.data.val) > 0  # type: ignore[arg-type]


@dataclass
class Optimisation:
    """SGD, its lr schedule (per optimiser step) and the AMP gradient scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler


@dataclass
class Progress:
    """What a checkpoint carries: the clock's histories, the best val accuracy, the next epoch,
    and the last epoch's metrics once it has trained (`pending`: restored from the checkpoint
    saved before the downstream evaluations)."""

    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    best_val: float = -1.0
    start_epoch: int = 1
    final: dict[str, Any] | None = None
    pending: bool = False
    best: BestVal = field(default_factory=BestVal)  # test accuracy at the best-val epoch


def train_loop(trial: TrialSpec, ctx: WorkerContext, run: RunTarget | None = None) -> None:
    """Train one trial on this worker. `run` is the trial's MLflow run (rank 0 logs there);
    without it nothing is logged (tests)."""
    w = build_worker(trial, ctx)
    opt = build_optimisation(w)
    state = ctx.load_state()
    if state is None and trial.model.init_from is not None:  # fine-tuning (a resume restores)
        init_encoder(w.core.encoder, trial.model.init_from, run)
    progress = restore(w, opt, state)
    log = RunLogger(run, ctx.is_main)
    w.clock = clock_for_worker(w, progress.history, log)
    log.tag({SELECTION_TAG: "best/val_acc1" if w.has_val else NO_SELECTION})
    if state is not None:
        log.tag({RESUMED_TAG: f"epoch {state['epoch']}: {ctx.restored_from}"})
    log.inputs(trial.dataset.model_dump(mode="json"), split_sizes(w.data))
    record_random_labels(log, w.data, trial.dataset)
    with log.system_metrics(trial.evaluation.system_metrics):
        if state is None and trial.evaluation.nc_metrics:
            start_clock(w, progress, log)
        for epoch in range(progress.start_epoch, trial.train.epochs + 1):
            metrics = train_epoch(w, opt, epoch)
            if not math.isfinite(metrics["train/loss"]):
                # Deterministic failure: report it (all ranks, same count) and stop, no retry.
                reason = f"training loss is {metrics['train/loss']} at epoch {epoch}"
                metrics.update(status="failed", reason=reason)
                log.log(metrics, epoch)
                ctx.report(tune_view(metrics, TUNE_KEYS))
                return
            end_of_epoch(w, opt, progress, log, metrics)
        if progress.final is not None:  # None: a restart after the trial had finished
            finish(w, opt, progress, log)


def split_sizes(data: DataBundle) -> dict[str, int]:
    """Samples per split (the training split counted un-augmented)."""
    return {"train": len(data.train_eval), "val": len(data.val), "test": len(data.test)}  # type: ignore[arg-type]


def model_meta(w: Worker) -> dict[str, Any]:
    """The logged model's metadata: the resolved trial, the input shape, the class count."""
    return {
        "trial": w.trial.model_dump(mode="json"),
        "input_shape": list(w.data.input_shape),
        "num_classes": w.data.num_classes,
    }


def model_example(data: DataBundle, n: int = 2) -> torch.Tensor:
    """The first `n` test inputs (the validation ones without a test split): the shape of the
    logged model's signature."""
    split = data.test if len(data.test) else data.val  # type: ignore[arg-type]
    return torch.stack([split[i][0] for i in range(min(n, len(split)))])  # type: ignore[arg-type]


def build_worker(trial: TrialSpec, ctx: WorkerContext) -> Worker:
    """Threads and device, then (seeded: identical initial weights on every rank) the data,
    the encoder and the loss as one network, and the loaders."""
    threads = max(1, int(trial.resources.cpus_per_worker))
    torch.set_num_threads(int(os.environ.get("NCSTUDY_THREADS", threads)))
    use_gpu = trial.resources.gpus_per_worker > 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if use_gpu else "cpu")
    seed_everything(trial.seed)

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
    loader, sampler = train_batches(trial, ctx, data, criterion.num_views, use_gpu)
    loaders = eval_loaders(trial, ctx, data)
    return Worker(trial, ctx, device, data, net, core, loader, sampler, loaders)


def train_batches(
    trial: TrialSpec, ctx: WorkerContext, data: DataBundle, views: int, pin_memory: bool
) -> tuple[Any, Any]:
    """(this rank's training batches, what `set_epoch` reshuffles): the dataset's FFCV loader
    (same order as a DistributedSampler) or a torch DataLoader; `views` augmented views per
    sample for SCL."""
    if trial.batch_size % ctx.world_size:
        raise ValueError(
            f"batch_size {trial.batch_size} is not divisible by {ctx.world_size} workers"
        )
    per_rank = trial.batch_size // ctx.world_size
    if data.train_loader is not None:
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
            pin_memory=pin_memory,
            num_workers=trial.dataset.num_workers,
            persistent_workers=trial.dataset.num_workers > 0,
        )
    if len(loader) == 0:
        raise TrialConfigError(
            f"batch_size {trial.batch_size} is larger than the training set "
            f"({len(data.train)} samples); lower grid.batch_size"  # type: ignore[arg-type]
        )
    return loader, sampler


def eval_loaders(trial: TrialSpec, ctx: WorkerContext, data: DataBundle) -> dict[str, DataLoader]:
    """This rank's shards of the evaluation splits: train (un-augmented), val and test."""
    shard = (ctx.rank, ctx.world_size, trial.evaluation.eval_batch_size, trial.dataset.num_workers)
    return {
        "train": passes.shard_loader(data.train_eval, *shard),
        "val": passes.shard_loader(data.val, *shard, persistent_workers=True),  # every epoch
        "test": passes.shard_loader(data.test, *shard),
    }


def build_optimisation(w: Worker) -> Optimisation:
    """SGD on the whole network (encoder and loss head), the per-step warmup + cosine schedule."""
    t = w.trial.train
    optimizer = torch.optim.SGD(
        w.net.parameters(),
        lr=w.trial.lr,
        momentum=t.momentum,
        nesterov=t.nesterov,
        weight_decay=t.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(w.trial, len(w.loader)))
    return Optimisation(optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=w.amp))


def restore(w: Worker, opt: Optimisation, state: dict[str, Any] | None) -> Progress:
    """The progress of a fresh start, or of the checkpoint `state` (loaded into the network and
    the optimisation)."""
    if state is None:
        return Progress()
    w.core.load_state_dict(state["model"])
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    opt.scaler.load_state_dict(state["scaler"])
    final = state.get("final_metrics")
    return Progress(
        history=state["history"],
        best_val=state["best_val"],
        start_epoch=state["epoch"] + 1,
        final=final,
        pending=final is not None,
        best=BestVal(**state.get("best_at_val", {})),
    )


def snapshot(w: Worker, opt: Optimisation, progress: Progress, epoch: int, **extra: Any) -> dict:
    """The self-describing checkpoint of the trial after `epoch`."""
    return {
        "model": w.core.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict(),
        "epoch": epoch,
        "history": progress.history,
        "best_val": progress.best_val,
        "best_at_val": dict(vars(progress.best)),
        "trial": w.trial.model_dump(mode="json"),
        **extra,
    }


def start_clock(w: Worker, progress: Progress, log: RunLogger) -> None:
    """Step 0: the metrics pass (logged at step 0) and the clock pass (iteration 0) run once
    before the first step; the clock measures closeness to a target of 0 against its value at
    initialisation."""
    init, nc_tags = _nc_evaluation(w.core, w.trial, w.data.num_classes, w.loaders, w.device)
    log.tag(nc_tags)
    log.log(init, 0)
    w.clock.measure(0)


def train_epoch(w: Worker, opt: Optimisation, epoch: int) -> dict[str, Any]:
    """One epoch of SGD on this rank; its statistics all-reduced over the ranks. Prototype
    classifiers (SCL fp) only exist after a pass over the training set: no running training
    accuracy for them (their accuracy comes from the evaluations)."""
    seed_everything(hash((w.trial.seed, epoch, w.ctx.rank)) % 2**31)
    w.sampler.set_epoch(epoch)
    w.net.train()
    started = time.perf_counter()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, n, correct, skipped anchors
    for x, y in w.loader:
        sums += train_step(w, opt, x, y)
        if w.clock is not None:  # every evaluation.convergence.every_steps iterations
            w.clock.after_step(opt.scheduler.last_epoch)
    loss_sum, n, correct, skipped = passes.all_reduce_sum(sums.tolist(), w.device)
    seconds = time.perf_counter() - started
    track_acc = not w.core.criterion.needs_class_means
    return {
        "epoch": epoch,
        "train/loss": loss_sum / n,
        **({"train/acc1": correct / n} if track_acc else {}),
        "loss/skipped_anchors": skipped,
        "train/lr": opt.scheduler.get_last_lr()[0],
        "perf/epoch_seconds": seconds,
        "perf/samples_per_second": n / seconds,
    }


def train_step(w: Worker, opt: Optimisation, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch; returns its (loss*n, n, correct, skipped anchors)."""
    crit = w.core.criterion
    x, y = x.to(w.device, non_blocking=True), y.to(w.device, non_blocking=True)
    if crit.num_views > 1:  # (B, V, ...) -> view-major (V*B, ...)
        x = x.transpose(0, 1).flatten(0, 1)
        y = y.repeat(crit.num_views)
    with torch.autocast(device_type=w.device.type, enabled=w.amp):
        out, h = w.net(x, y)
    opt.optimizer.zero_grad(set_to_none=True)
    objective = out.loss + feature_penalty(h, w.trial.train.feature_decay)
    opt.scaler.scale(objective).backward()
    clip_gradients(w.net, opt.optimizer, opt.scaler, w.trial.train.grad_clip_norm)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    correct = 0.0
    if not crit.needs_class_means:
        with torch.no_grad():
            correct = float((crit.scores(h.detach()).argmax(1) == y).sum())
    stats = [float(out.loss.detach()) * len(y), len(y), correct, out.skipped_anchors]
    return torch.tensor(stats, dtype=torch.float64)


def end_of_epoch(
    w: Worker, opt: Optimisation, progress: Progress, log: RunLogger, metrics: dict[str, Any]
) -> None:
    """Evaluate (every `evaluation.every` epochs and at the last), track the best val accuracy,
    then log and report with a checkpoint when one is due; the last epoch's metrics are kept
    for `finish` instead."""
    trial, epoch = w.trial, metrics["epoch"]
    ev = trial.evaluation
    evaluated = epoch % ev.every == 0 or epoch == trial.train.epochs
    if evaluated:
        found, nc_tags = _evaluate(
            w.core, trial, w.data.num_classes, w.loaders, w.device, epoch, w.has_val
        )
        metrics.update(found)
        metrics.update(reaug_probe.standard_probe_metrics(w, epoch))  # Table 14's standard LP
        log.tag(nc_tags)
    elif w.has_val and not w.core.criterion.needs_class_means:
        # validation accuracy every epoch (cheap: forward only on the small split) so that
        # schedulers and pruners see it; prototype classifiers only exist after an evaluation
        metrics["val/acc1"] = passes.accuracy(
            w.core.encoder, w.core.criterion, w.loaders["val"], w.device
        )
    if ev.test_at_best_val:  # before best_val moves: the test accuracy of a new best epoch
        test = partial(passes.accuracy, w.core.encoder, w.core.criterion, w.loaders["test"])
        track_best_val(progress.best, progress.best_val, metrics, partial(test, w.device))
    if "val/acc1" in metrics:
        progress.best_val = max(progress.best_val, metrics["val/acc1"])
        metrics["best/val_acc1"] = progress.best_val
    if epoch == trial.train.epochs:
        progress.final = metrics
        return
    due = evaluated if ev.checkpoint_every is None else epoch % ev.checkpoint_every == 0
    log.log(metrics, epoch)
    state = snapshot(w, opt, progress, epoch) if due else None
    w.ctx.report(tune_view(metrics, TUNE_KEYS), state=state)


def finish(w: Worker, opt: Optimisation, progress: Progress, log: RunLogger) -> None:
    """After the last epoch: the downstream evaluations (checkpointed before them, so that a
    retry after a failure there redoes only them; the last epoch's metrics travel in that
    checkpoint and reach MLflow once, with the downstream results), the final and best values,
    the convergence clock, and the final report."""
    trial, final, epochs = w.trial, progress.final, w.trial.train.epochs
    assert final is not None  # train_loop calls this once the last epoch has trained
    counts, downstream = ds.downstream_plan(trial, w.data.num_classes, w.loaders, w.device)
    if downstream and not progress.pending:
        state = snapshot(w, opt, progress, epochs, final_metrics=final)
        w.ctx.report(_pending_view(final), state=state)
    if downstream:
        encoder, criterion = w.core.encoder, w.core.criterion
        final.update(
            ds.evaluate_downstream(
                encoder, criterion, trial, w.data.num_classes, w.loaders, w.device, counts
            )
        )
    alpha = trial.evaluation.convergence.ewma_alpha
    final.update(_summary(final, progress.history, w.data.num_classes, alpha))
    final["steps_total"] = float(opt.scheduler.last_epoch)  # Table 7 (I): of max iterations
    final.update(data_metrics(w.data.class_counts))  # the training split's imbalance
    final["status"] = "finished"
    log.log(final, epochs)
    log.model(w.core, model_meta(w), model_example(w.data))
    log_features_2d(w.core.encoder, w.core.criterion, w.data.test, w.device, log)  # d = 2 only
    state = None if downstream else snapshot(w, opt, progress, epochs)
    w.ctx.report(tune_view(final, TUNE_KEYS), state=state)


def _nc_evaluation(
    core: Network,
    trial: TrialSpec,
    num_classes: int,
    loaders: dict[str, DataLoader],
    device: torch.device,
) -> tuple[dict[str, float], dict[str, str]]:
    """The NC metrics (`nc/`, `test/nc/`) and their nc4 sources (tags). The training-set pass
    also sets SCL prototypes; the test-set pass never touches the classifier."""
    ev, enc, crit = trial.evaluation, core.encoder, core.criterion
    train = passes.nc_pass(
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
        test = passes.nc_pass(enc, crit, loaders["test"], num_classes, device, ev.max_intra_classes)
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
    ev, enc, crit = trial.evaluation, core.encoder, core.criterion
    out: dict[str, float] = {}
    tags: dict[str, str] = {}
    if ev.nc_metrics or crit.needs_class_means:  # the training pass also sets SCL prototypes
        out, tags = _nc_evaluation(core, trial, num_classes, loaders, device)
    if has_val:
        out["val/acc1"] = passes.accuracy(enc, crit, loaders["val"], device)
    out["test/acc1"] = passes.accuracy(enc, crit, loaders["test"], device)
    if crit.needs_class_means and epoch == trial.train.epochs and ev.probes.enabled:
        # SCL: fixed prototypes (fp) are the loss's own rule; lp and nlp are trained probes
        if has_val:
            out["val/fp_acc1"] = out["val/acc1"]
        out["test/fp_acc1"] = out["test/acc1"]
        splits = ("val", "test") if has_val else ("test",)
        out.update(
            passes.probe_accuracies(
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
    out = {
        f"final/{k.replace('/', '_')}": v
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and "acc1" in k and "/nc/" not in k
    }
    out.update(clock_summary(history, num_classes, alpha))
    return out


def _pending_view(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune sees of the report that saves the checkpoint before the downstream
    evaluations: no `epoch`, so schedulers ignore it (ASHA stops a trial at its report at
    max_t, which must be the final one), and no test/acc1 (one progress line per epoch)."""
    view = tune_view(metrics, TUNE_KEYS)
    return {k: v for k, v in view.items() if k not in ("epoch", "test/acc1")}


def ray_train_entry(config: dict[str, Any]) -> None:
    """Entry point of a Ray Train worker (TorchTrainer's train_loop_per_worker): `config` holds
    the trial (its JSON dump) and its RunTarget."""
    train_loop(TrialSpec.model_validate(config["trial"]), RayTrainContext(), config["run"])
    if dist.is_initialized():
        dist.barrier()
