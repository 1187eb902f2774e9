"""Benchmark of ncstudy.metrics on CPU (spec/metrics.md, "Performance bar").

Part 1: the streaming statistics and all metrics for N = 50,000, d = 512, K = 100 against a
direct full-matrix computation in the style of the source paper's code (all features in memory,
a per-class covariance and SVD for the intra-class effective rank).
Part 2: a metrics pass (forward + NCAccumulator.update) against a plain inference pass over the
same images, for the project's SmallCNN and a CIFAR ResNet-18 (both with d = 512 features).

    python benchmarks/bench_metrics.py [--threads 1] [--n 50000] [--infer-n 8192]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ncstudy.metrics import NCAccumulator, compute_nc_metrics
from ncstudy.metrics.compute import _feature_metrics, _weight_metrics


def synthetic(n: int, d: int, k: int, seed: int = 0):
    """Clustered float32 features with a low-rank within-class part, labels, a classifier."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=g)
    centres = 4 * torch.randn(k, d, generator=g)
    basis = torch.randn(32, d, generator=g)
    noise = torch.randn(n, 32, generator=g) @ basis + 0.3 * torch.randn(n, d, generator=g)
    return (centres[labels] + noise).float(), labels, torch.randn(k, d, generator=g)


def erank(s: torch.Tensor) -> float:
    """Effective rank of a non-negative spectrum."""
    p = s[s > 0] / s.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def direct(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int) -> dict[str, float]:
    """nc1, erank_intra, erank_inter, erank_weights from the full feature matrix (float64)."""
    h = h.double()
    z = F.normalize(h, dim=1)
    means = torch.stack([h[y == c].mean(0) for c in range(k)])
    centred = h - means[y]
    sigma_w = centred.T @ centred / len(y)
    mt = means - h.mean(0)
    sigma_b = mt.T @ mt / k
    ev, vec = torch.linalg.eigh(sigma_b)
    ev, vec = ev[-(k - 1) :], vec[:, -(k - 1) :]
    nc1 = float(torch.trace(sigma_w @ (vec / ev) @ vec.T) / k)
    intra = []
    for c in range(k):
        zc = z[y == c]
        cov = torch.cov(zc.T, correction=0)
        intra.append(erank(torch.linalg.svdvals(cov)))
    zmeans = torch.stack([z[y == c].mean(0) for c in range(k)])
    inter = erank(torch.linalg.svdvals(torch.cov(zmeans.T, correction=0)))
    wn = F.normalize(w.double(), dim=1)
    weights = erank(torch.linalg.svdvals(torch.cov(wn.T, correction=0)))
    return {
        "nc1": nc1,
        "erank_intra": sum(intra) / k,
        "erank_inter": inter,
        "erank_weights": weights,
    }


def timed(fn, *args, **kw):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - start


def part_statistics(n: int, d: int, k: int, batch: int) -> tuple[float, float]:
    """Streaming statistics + metrics vs the direct full-matrix computation.

    Returns (update seconds per sample, N-independent seconds of statistics() + metrics).
    """
    h, y, w = synthetic(n, d, k)
    preds = y.clone()
    preds[::7] = (preds[::7] + 1) % k

    def accumulate() -> NCAccumulator:
        acc = NCAccumulator(k, d, max_intra_classes=100)
        for start in range(0, n, batch):
            sl = slice(start, start + batch)
            acc.update(h[sl], y[sl], preds[sl])
        return acc

    acc, t_acc = timed(accumulate)
    stats, t_stats = timed(acc.statistics)  # includes the exact nc4 scoring of the cache
    _, t_feat = timed(_feature_metrics, stats)
    _, t_weight = timed(_weight_metrics, stats, w.double())
    metrics, t_all = timed(compute_nc_metrics, stats, w)
    want, t_direct = timed(direct, h, y, w, k)
    total = t_acc + t_stats + t_all
    print(f"== statistics + metrics: N={n}, d={d}, K={k}, batch={batch}")
    print(f"accumulate ({math.ceil(n / batch)} updates)   {t_acc:8.2f} s")
    print(f"statistics() incl. exact nc4     {t_stats:8.2f} s")
    print(f"feature metrics                  {t_feat:8.2f} s")
    print(f"weight metrics (incl. gnc2 QPs)  {t_weight:8.2f} s")
    print(f"compute_nc_metrics (all {len(metrics)})     {t_all:8.2f} s")
    print(f"streaming total                  {total:8.2f} s")
    print(f"direct full-matrix (4 metrics)   {t_direct:8.2f} s   ratio {t_direct / total:.2f}x")
    for name, value in want.items():
        rel = abs(metrics[name] - value) / abs(value)
        print(f"  {name:14s} streaming {metrics[name]:.10g}  direct {value:.10g}  rel {rel:.1e}")
    return t_acc / n, t_stats + t_all


class ResNet18Cifar(nn.Module):
    """torchvision ResNet-18 with the CIFAR 3x3 stem and no max-pool; outputs 512 features."""

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet18(num_classes=10)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def inference_pass(model, head, images, labels, batch: int, k: int | None) -> tuple[float, float]:
    """One eval-mode pass: (total seconds, seconds in the metrics) ; k=None: plain inference."""
    acc = None if k is None else NCAccumulator(k, 512)
    in_metrics = 0.0
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        feats = model(images[i : i + batch])
        preds = head(feats).argmax(1)
        if acc is not None:
            t = time.perf_counter()
            acc.update(feats, labels[i : i + batch], preds)
            in_metrics += time.perf_counter() - t
    if acc is not None:
        t = time.perf_counter()
        compute_nc_metrics(acc.statistics(), head.weight)
        in_metrics += time.perf_counter() - t
    return time.perf_counter() - start, in_metrics


def part_pass_ratio(n: int, k: int, batch: int, full_n: int, costs: tuple[float, float]) -> None:
    """Metrics pass vs plain inference pass over the same images (best of 2 each).

    Measured at N = n, and extrapolated to a full pass of `full_n` images with the per-sample
    update cost and the N-independent metric cost measured in part 1 (`costs`).
    """
    from ncstudy.models.small_cnn import SmallCNN

    update_per_sample, fixed = costs
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    for name, model, size in (
        ("SmallCNN(width 32, d 512)", SmallCNN(3, 32, 512), n),
        ("ResNet-18 CIFAR (d 512)", ResNet18Cifar(), max(batch, n // 4)),
    ):
        model.eval()
        head = nn.Linear(512, k, bias=False)
        x, y = images[:size], labels[:size]
        inference_pass(model, head, x[:batch], y[:batch], batch, None)  # warm-up
        plain = min(inference_pass(model, head, x, y, batch, None)[0] for _ in range(2))
        total, in_metrics = min(inference_pass(model, head, x, y, batch, k) for _ in range(2))
        print(
            f"{name:27s} N={size:6d}: plain {plain:6.2f} s  metrics pass {total:6.2f} s  "
            f"ratio {total / plain:.3f}x  (metrics part {in_metrics:.2f} s)"
        )
        plain_full = plain / size * full_n
        metric_full = plain_full + update_per_sample * full_n + fixed
        print(
            f"{'':27s} at N={full_n}: plain {plain_full:7.1f} s  metrics pass {metric_full:7.1f} s"
            f"  ratio {metric_full / plain_full:.3f}x (extrapolated)"
        )


def main() -> None:
    """Run both parts with the given sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--infer-n", type=int, default=8192)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    costs = part_statistics(args.n, args.dim, args.classes, args.batch)
    print(f"== metrics pass vs plain inference pass (batch {args.batch})")
    part_pass_ratio(args.infer_n, args.classes, args.batch, args.n, costs)


if __name__ == "__main__":
    main()
