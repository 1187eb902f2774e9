"""ncstudy's normface / ntce / nonl against the source paper's own losses.py, forward+backward
time per step on the same inputs, interleaved step by step in a shuffled order (robust to
load from other jobs and to which case runs before which).

The authors' file is loaded at run time from the folder given (never copied into the repo):

    python benchmarks/bench_losses_vs_authors.py ../shared/anchors/nc_by_design [--steps 200]

B = 512, d = 512, K = 100, tau = 0.1, float32, 1 thread by default. Both sides normalise h and
W inside the timed step (the authors' losses take normalised inputs). Per case: the minimum
and the median over the steps; ratios of the minima. Values agree to ~1e-15 in float64
(tests/losses/test_losses_fused.py checks them).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ncstudy.losses import build_loss

NAMES = ("normface", "ntce", "nonl")


def load_authors(folder: Path):
    """The authors' losses.py as a module."""
    spec = importlib.util.spec_from_file_location("ncbd_losses", folder / "losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(authors, h, y, d: int, k: int, tau: float) -> dict[str, Callable[[], None]]:
    """One forward+backward step per case, each on a fresh leaf copy of h."""
    fns = {
        "normface": lambda z, w: authors.NormFace(temperature=tau)(z, w.T, y),
        "ntce": lambda z, w: authors.NTCE(temperature=tau)(z, w, y),
        "nonl": lambda z, w: authors.NONL(temperature=tau, symmetric=True)(z, w.T, y),
    }
    out: dict[str, Callable[[], None]] = {}
    for name in NAMES:
        ours = build_loss(name, {"temperature": tau}, feature_dim=d, num_classes=k, seed=0)
        weight = ours.head.weight.detach()

        def step_ours(loss=ours) -> None:
            loss(h.clone().requires_grad_(True), y).loss.backward()
            loss.zero_grad(set_to_none=True)

        def step_authors(fn=fns[name], weight=weight) -> None:
            hh, ww = h.clone().requires_grad_(True), weight.clone().requires_grad_(True)
            fn(F.normalize(hh, dim=1), F.normalize(ww, dim=1)).backward()

        out[f"ours {name}"], out[f"authors {name}"] = step_ours, step_authors
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("anchors", type=Path, help="folder holding the authors' losses.py")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(args.batch, args.dim, generator=gen)
    y = torch.randint(0, args.classes, (args.batch,), generator=gen)
    steps = cases(load_authors(args.anchors), h, y, args.dim, args.classes, args.tau)
    times: dict[str, list[float]] = {label: [] for label in steps}
    labels, order = list(steps), torch.Generator().manual_seed(1)
    for i in range(args.steps + 5):
        # every case sees the same load; a fresh order each round, so no case always follows
        # the same neighbour (a heavy step before a light one leaves it a colder cache)
        for j in torch.randperm(len(labels), generator=order).tolist():
            label, step = labels[j], steps[labels[j]]
            start = time.perf_counter()
            step()
            if i >= 5:
                times[label].append(time.perf_counter() - start)
    best = {label: min(t) for label, t in times.items()}
    print(
        f"B={args.batch} d={args.dim} K={args.classes} tau={args.tau} threads={args.threads} "
        f"steps={args.steps} torch={torch.__version__}"
    )
    print(f"{'case':18s} {'min ms':>8s} {'median ms':>10s}")
    for label, t in times.items():
        print(f"{label:18s} {best[label] * 1e3:8.2f} {statistics.median(t) * 1e3:10.2f}")
    for name in NAMES:
        ratio = best[f"ours {name}"] / best[f"authors {name}"]
        print(f"ratio ours/authors {name:9s} {ratio:.2f}")
    print(f"ratio ours nonl/ours normface  {best['ours nonl'] / best['ours normface']:.2f}")


if __name__ == "__main__":
    main()
