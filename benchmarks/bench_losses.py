"""Forward+backward time per step of every registered loss on CPU, as ratios to `ce`.

Default: B = 512 images, d = 512, K = 100 (supcon: 2 views, so 1024 rows, plus its projection
head); h is a leaf standing in for the encoder output. Median over repeats, best of a few
round-robin rounds, one process.

    python benchmarks/bench_losses.py [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ncstudy.losses import build_loss, list_losses

VARIANTS = {"ntce+queue4096": ("ntce", {"queue_size": 4096})}


def time_step(name: str, params: dict, batch: int, dim: int, classes: int, repeats: int) -> float:
    """Median seconds of one forward+backward of the loss (after warm-up)."""
    loss = build_loss(name, params, feature_dim=dim, num_classes=classes, seed=0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (batch,), generator=gen).repeat(loss.num_views)
    h = torch.randn(y.numel(), dim, generator=gen, requires_grad=True)
    times = []
    for i in range(repeats + 3):  # 3 warm-up steps (and, for the queue, filling it)
        start = time.perf_counter()
        out = loss(h, y)
        out.loss.backward()
        if i >= 3:
            times.append(time.perf_counter() - start)
        h.grad = None
        loss.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="min over rounds (noisy hosts)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = {name: (name, {}) for name in list_losses()} | VARIANTS
    shape = (args.batch, args.dim, args.classes, args.repeats)
    # round-robin over the losses, keep each loss's best round: robust to load from other jobs
    results = {label: float("inf") for label in cases}
    for _ in range(args.rounds):
        for label, (name, params) in cases.items():
            results[label] = min(results[label], time_step(name, params, *shape))
    base = results["ce"]
    print(
        f"B={args.batch} d={args.dim} K={args.classes} threads={args.threads} "
        f"torch={torch.__version__}"
    )
    print(f"{'loss':<16}{'ms/step':>10}{'x ce':>8}")
    for label, seconds in results.items():
        print(f"{label:<16}{seconds * 1e3:>10.2f}{seconds / base:>8.2f}")


if __name__ == "__main__":
    main()
