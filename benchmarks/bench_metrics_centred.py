"""Cost of the centred NC statistics against the previous uncentred accumulator.

The centred accumulator (ncstudy.metrics.stats) shifts each class's rows by a row of the class
and accumulates shifted sums and scatters (on CPU: the lower triangle, BLAS syrk); the previous
one accumulated raw second moments (torch addmm). Both accumulate the same float32 features
(N = 50,000, d = 512, K = 100, batches of 512, every class tracked, predictions given) and end
with statistics(); alternating, best of R rounds, 1 thread. The baseline is loaded from an
older checkout given on the command line, e.g.

    mkdir -p /tmp/old && git archive eb4ac50 ncstudy | tar -x -C /tmp/old
    python benchmarks/bench_metrics_centred.py --baseline /tmp/old/ncstudy/metrics/stats.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import torch

from ncstudy.metrics import stats as centred


def load(path: str):
    """The baseline accumulator module from a file path."""
    spec = importlib.util.spec_from_file_location("baseline_stats", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def data(n: int, d: int, k: int):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    h = (4 * torch.randn(k, d, generator=g))[y] + torch.randn(n, d, generator=g)
    return h, y


def accumulate(module, h, y, k: int, batch: int) -> float:
    """Seconds for update() over all batches plus statistics()."""
    start = time.perf_counter()
    acc = module.NCAccumulator(k, h.shape[1], max_intra_classes=k)
    for s in range(0, len(y), batch):
        acc.update(h[s : s + batch], y[s : s + batch], y[s : s + batch])
    acc.statistics()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="path to the previous stats.py")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    baseline = load(args.baseline)
    h, y = data(args.n, args.dim, args.classes)
    best = {"uncentred (baseline)": float("inf"), "centred": float("inf")}
    for _ in range(args.rounds):
        for name, module in (("uncentred (baseline)", baseline), ("centred", centred)):
            seconds = accumulate(module, h, y, args.classes, args.batch)
            best[name] = min(best[name], seconds)
    print(f"N={args.n} d={args.dim} K={args.classes} batch={args.batch} best of {args.rounds}")
    for name, seconds in best.items():
        print(f"{name:22s} {seconds:7.2f} s")
    print(f"centred / uncentred: {best['centred'] / best['uncentred (baseline)']:.2f}x")


if __name__ == "__main__":
    main()
