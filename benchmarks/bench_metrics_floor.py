"""How close the exact NC metrics are to their arithmetic floor (issue 18's metrics goal).

On the features of `../shared/bench/metrics_vs_ncbd.py` (N = 50,000 unit-norm float32 rows,
d = 512, K = 100), one process, 1 thread, best of R rounds, alternating:
- ncstudy: `NCAccumulator` over batches of 512 + `statistics()` + all 26 metrics;
- the floor: the work no exact method avoids: the two float64 scatters every row enters (the
  pooled within-class scatter of h for nc1 and the per-class scatter of z for erank_intra;
  BLAS syrk, half a gemm's flops) and the K dense symmetric eigenvalue problems of erank_intra
  (LAPACK, numpy's batched eigvalsh), nothing else;
- optionally (`--anchor DIR`, a checkout of the source paper's code holding util.py) the
  authors' 7 metrics exactly as the shared script calls them.
It prints each time, ncstudy over the floor, and the largest speed-up over the authors that
any exact streaming implementation could reach here (their time over the floor).

    python benchmarks/bench_metrics_floor.py [--anchor ../shared/anchors/nc_by_design] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg.blas import dsyrk
from threadpoolctl import threadpool_limits

from ncstudy.metrics import NCAccumulator, compute_nc_metrics


def features(n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared script's inputs: unit-norm clustered features, labels, a classifier."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (n,), generator=g)
    h = (4 * torch.randn(k, d, generator=g))[y] + torch.randn(n, d, generator=g)
    w = torch.randn(k, d, generator=g)
    return F.normalize(h, dim=1), y, w


def ncstudy_pass(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int) -> int:
    acc = NCAccumulator(k, z.shape[1], max_intra_classes=k)
    for s in range(0, len(y), 512):
        acc.update(z[s : s + 512], y[s : s + 512], y[s : s + 512])
    return len(compute_nc_metrics(acc.statistics(), w))


def floor_parts(z: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, Callable[[], object]]:
    """The two scatters' syrk and the K eigenvalue problems, on float64 copies made here."""
    x = z.double().numpy()
    order = np.argsort(y.numpy(), kind="stable")
    blocks = np.split(x[order], np.cumsum(np.bincount(y.numpy(), minlength=k))[:-1])
    d = x.shape[1]
    sym = np.stack([b.T @ b for b in blocks])  # symmetric inputs for the eigenvalue part

    def pooled() -> object:
        return dsyrk(1.0, x.T, trans=0)  # one d x d product of all N rows

    def per_class() -> object:
        c = np.zeros((d, d), order="F")
        for b in blocks:  # one d x d product per class, as many rows in all
            dsyrk(1.0, b.T, beta=0.0, c=c, trans=0, overwrite_c=1)
        return c

    def eigenvalues() -> object:
        return np.linalg.eigvalsh(sym, UPLO="L")

    return {"syrk, pooled h": pooled, "syrk, per class z": per_class, "eigvalsh x K": eigenvalues}


def anchor_fn(folder: str, z: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> Callable:
    """The authors' util.py called as ../shared/bench/metrics_vs_ncbd.py calls it."""
    spec = importlib.util.spec_from_file_location("ncbd_util", f"{folder}/util.py")
    assert spec is not None and spec.loader is not None
    util = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(util)
    wn = F.normalize(w, dim=1)

    def run() -> int:
        util.embedding_ETF_metrics(z, y)
        util.weight_embeddings_information(z, wn.T.contiguous(), y)
        util.NC(wn[y], z, wn.T.contiguous(), y)
        return 7

    return run


def best_of(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each function, the functions alternating round by round."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--anchor", help="folder holding the authors' util.py")
    a = ap.parse_args()
    torch.set_num_threads(1)
    z, y, w = features(a.n, a.d, a.k)
    fns: dict[str, Callable[[], object]] = {
        "ncstudy (26 metrics)": lambda: ncstudy_pass(z, y, w, a.k)
    }
    parts = floor_parts(z, y, a.k)
    fns.update(parts)
    if a.anchor:
        fns["authors (7 metrics)"] = anchor_fn(a.anchor, z, y, w)
    with threadpool_limits(limits=1):  # every BLAS at 1 thread, the authors' numpy too
        best = best_of(fns, a.rounds)
    floor = sum(best[p] for p in parts)
    print(f"N={a.n} d={a.d} K={a.k}, 1 thread (every BLAS), best of {a.rounds}")
    for name, t in best.items():
        print(f"{name:28s} {t:7.3f} s")
    print(f"{'floor (the three parts)':28s} {floor:7.3f} s")
    print(f"ncstudy / floor: {best['ncstudy (26 metrics)'] / floor:.2f}x")
    if a.anchor:
        anchor = best["authors (7 metrics)"]
        print(f"authors / ncstudy: {anchor / best['ncstudy (26 metrics)']:.2f}x")
        print(f"authors / floor (the most any exact method gains here): {anchor / floor:.2f}x")


if __name__ == "__main__":
    main()
