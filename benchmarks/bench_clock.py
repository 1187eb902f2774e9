"""Benchmark of the convergence clock's pass (ncstudy.evaluate.clock) against a training step.

The clock pass runs every `evaluation.convergence.every_steps` iterations: a forward pass over
`subset_size` held-in-memory training images plus the tracked metrics of their features. This
script times, in one process on CIFAR-shaped random images (3x32x32, K classes): one training
step (forward + backward + SGD at `--batch`), one clock pass (split into its forward part and
its metrics part), and prints the ratio clock/step and the overhead at a few cadences
(clock / (every_steps x step)).

    python benchmarks/bench_clock.py [--model small_cnn] [--width 16] [--batch 128]
        [--subset 1000] [--classes 100] [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import TensorDataset

from ncstudy.config import expand, parse_study
from ncstudy.evaluate.clock import ClockPass
from ncstudy.losses import build_loss
from ncstudy.metrics.clock_metrics import clock_metrics
from ncstudy.models import build_model
from ncstudy.train import Network


def setup(args: argparse.Namespace) -> tuple:
    """A trial (for the clock's settings), the network, an optimiser, a batch, the dataset."""
    study = {
        "name": "bench",
        "model": {"name": args.model, "width": args.width, "feature_dim": args.dim},
        "losses": [{"name": args.loss}],
        "grid": {"temperature": [0.1], "batch_size": [args.batch]},
        "evaluation": {"convergence": {"subset_size": args.subset}},
    }
    trial = expand(parse_study(study))[0]
    g = torch.Generator().manual_seed(0)
    n = max(args.subset, args.batch)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, args.classes, (n,), generator=g)
    encoder = build_model(trial.model, (3, 32, 32))
    criterion = build_loss(
        args.loss, {"temperature": 0.1} if args.loss != "ce" else {},
        feature_dim=encoder.feature_dim, num_classes=args.classes,
    )  # fmt: skip
    net = Network(encoder, criterion)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return trial, net, opt, (images[: args.batch], labels[: args.batch]), images, labels


def step_seconds(net: Network, opt: torch.optim.Optimizer, batch: tuple) -> float:
    """One training step, as the worker loop's train_step does it (no AMP on the CPU)."""
    net.train()
    started = time.perf_counter()
    out, _ = net(*batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return time.perf_counter() - started


def clock_seconds(clock: ClockPass, classes: int) -> tuple[float, float, float]:
    """(whole clock pass, its forward part, its metrics part) in seconds."""
    started = time.perf_counter()
    clock.measure(0)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    features, labels = clock._features()
    forward = time.perf_counter() - started
    weights = clock.core.criterion.classifier_weights()
    started = time.perf_counter()
    clock_metrics(features, labels, classes, weights, clock.max_intra_classes)
    return whole, forward, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--loss", default="nonl")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--subset", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    trial, net, opt, batch, images, labels = setup(args)
    data = TensorDataset(images, labels)
    clock = ClockPass(trial, net, data, args.classes, torch.device("cpu"), {}, lambda m, s: None)
    steps, clocks = [], []
    for _ in range(args.rounds):  # interleaved: machine load hits both alike
        steps += [step_seconds(net, opt, batch) for _ in range(3)]
        clocks.append(clock_seconds(clock, args.classes))
    step = statistics.median(steps[3:] or steps)
    whole, forward, metrics = (statistics.median(c[i] for c in clocks) for i in range(3))
    print(
        f"model={args.model} width={args.width} d={args.dim} loss={args.loss} "
        f"batch={args.batch} subset={args.subset} K={args.classes} threads={args.threads} "
        f"torch={torch.__version__}"
    )
    print(f"training step   {1000 * step:9.1f} ms")
    print(f"clock pass      {1000 * whole:9.1f} ms  = {whole / step:5.2f} training steps")
    print(f"  forward       {1000 * forward:9.1f} ms")
    print(f"  metrics       {1000 * metrics:9.1f} ms")
    for every in (20, 50, 200):
        print(f"every_steps={every:<4d} overhead {100 * whole / (every * step):6.2f} % of training")


if __name__ == "__main__":
    main()
