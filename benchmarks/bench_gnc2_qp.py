"""gnc2's min-norm-point QPs: accuracy and speed of QP solvers (spec/metrics.md, gnc2).

Every solver gets the same strictly convex form (min ||v||^2/2 s.t. y_j . v >= 1, one QP per
class) and the same certificate (`generalized.hull_bounds`: its multipliers give a hull point,
its v a separating direction). Reported per problem: the time of all K QPs (best of 2), the
worst certified relative gap (upper - lower)/upper over the classes (gnc2 reports a distance
only below 1e-9), and rho's distance from DAQP's. Problems: the softmax codes (d, K) = (5, 16),
(6, 27), (4, 120), exact, perturbed by 1e-8 and as ncstudy's spherical UFM reaches them, and
random W at (K, d) = (100, 512) and (100, 10).

The production path (ncstudy.metrics.generalized, DAQP called directly) always runs; the other
solvers run through qpsolvers when it and they are installed (not ncstudy dependencies):
    pip install --target /tmp/qp qpsolvers==4.13.0 quadprog==0.1.14 clarabel==0.11.1 \\
        osqp==1.1.3 piqp==0.6.4 proxsuite==0.8.0
    PYTHONPATH=$PWD:/tmp/qp:/tmp/qp/cmeel.prefix/lib/python3.11/site-packages \\
        python benchmarks/bench_gnc2_qp.py
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import time
import warnings

import numpy as np
import torch

from ncstudy.metrics import generalized
from ncstudy.metrics.stats import blas_threads

# qpsolvers name -> settings for a tight solve (their defaults stop at ~1e-6 .. 1e-8).
SOLVERS = {
    "quadprog": {},
    "daqp": {"primal_tol": 1e-12, "dual_tol": 1e-12},
    "clarabel": {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12},
    "osqp": {"eps_abs": 1e-10, "eps_rel": 1e-10, "polishing": True, "max_iter": 100_000},
    "piqp": {"eps_abs": 1e-12, "eps_rel": 1e-12},
    "proxqp": {"eps_abs": 1e-12},
}


def demicube_5() -> np.ndarray:
    rows = [s for s in itertools.product((-1.0, 1.0), repeat=5) if np.prod(s) > 0]
    return np.array(rows) / math.sqrt(5)


def schlafli_27() -> np.ndarray:
    lines = [("a", {i}) for i in range(6)] + [("b", {i}) for i in range(6)]
    lines += [("c", set(p)) for p in itertools.combinations(range(6), 2)]

    def meet(x, y) -> bool:
        (s, i), (t, j) = x, y
        if {s, t} == {"a", "b"}:
            return i != j
        if s == t:
            return s == "c" and not (i & j)
        return bool(i & j)

    gram = np.array(
        [[1.0 if p == q else (-0.5 if meet(p, q) else 0.25) for q in lines] for p in lines]
    )
    ev, vec = np.linalg.eigh(gram)
    return vec[:, -6:] * np.sqrt(ev[-6:])


def cell_600() -> np.ndarray:
    phi = (1 + math.sqrt(5)) / 2
    rows = [s * e for e in np.eye(4) for s in (-1.0, 1.0)]
    rows += [np.array(s) / 2 for s in itertools.product((-1.0, 1.0), repeat=4)]
    for perm in itertools.permutations(range(4)):
        if sum(perm[i] > perm[j] for i in range(4) for j in range(i + 1, 4)) % 2:
            continue
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            x = np.zeros(4)
            x[list(perm)] = [phi * signs[0], signs[1], signs[2] / phi, 0.0]
            rows.append(x / 2)
    return np.array(rows)


def ufm_code(d: int, k: int) -> np.ndarray:
    """The unit class weights of ncstudy's spherical UFM (NormFace, tau 0.1, 1000 iterations)."""
    from ncstudy.losses import build_loss
    from ncstudy.ufm import SphericalUFM, balanced_labels

    crit = build_loss("normface", {"temperature": 0.1}, feature_dim=d, num_classes=k, seed=0)
    problem = SphericalUFM(crit, balanced_labels(k, 2), d, seed=0)
    problem.run(1000)
    return problem.weights().detach().double().numpy()


def problems() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, (build, d, k) in {
        "demicube (5,16)": (demicube_5, 5, 16),
        "schlafli (6,27)": (schlafli_27, 6, 27),
        "600-cell (4,120)": (cell_600, 4, 120),
    }.items():
        w = build()
        out[name] = w
        out[name + " +1e-8"] = w + 1e-8 * rng.normal(size=w.shape)
        out[name + " UFM"] = ufm_code(d, k)
    out["random (100,512)"] = rng.normal(size=(100, 512))
    out["random (100,10)"] = rng.normal(size=(100, 10))
    return out


def qpsolvers_bounds(solver: str):
    """A function y -> (lower, upper) solving the homogeneous QP with `solver` via qpsolvers."""
    from qpsolvers import Problem, solve_problem

    def bounds(y: np.ndarray) -> tuple[float, float]:
        n, r = y.shape
        sol = solve_problem(
            Problem(np.eye(r), np.zeros(r), -y, -np.ones(n)), solver, **SOLVERS[solver]
        )
        if sol.x is None or sol.z is None:
            return 0.0, float("inf")
        return generalized.hull_bounds(y, np.maximum(sol.z, 0.0), sol.x)

    return bounds


def run(w: np.ndarray, bounds) -> tuple[float, float, float]:
    """(rho as the min upper bound, worst relative gap, seconds) over all K classes."""
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    start = time.perf_counter()
    points = generalized.span_coordinates(unit)
    rho, worst = float("inf"), 0.0
    for k in range(len(points)):
        lower, upper = bounds(np.delete(points, k, axis=0) - points[k])
        rho = min(rho, upper)
        worst = max(worst, (upper - lower) / upper if upper > 0 else 0.0)
    return rho, worst, time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    rows = [("daqp (ncstudy, direct)", generalized.min_norm_bounds)]
    if importlib.util.find_spec("qpsolvers") is None:
        print("qpsolvers not installed: only the production solver runs (see the docstring)")
    else:
        from qpsolvers import available_solvers

        rows += [
            (f"{s} (qpsolvers)", qpsolvers_bounds(s)) for s in SOLVERS if s in available_solvers
        ]
        print("not installed:", [s for s in SOLVERS if s not in available_solvers])
    print(
        f"{'problem':24s} {'solver':24s} {'time s':>8s} {'max rel gap':>12s} {'|rho - daqp|':>12s}"
    )
    for name, w in problems().items():
        reference = None
        for label, bounds in rows:
            best = None
            for _ in range(2):
                with blas_threads(1), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = run(w, bounds)
                best = result if best is None or result[2] < best[2] else best
            rho, worst, seconds = best
            reference = rho if reference is None else reference
            print(
                f"{name:24s} {label:24s} {seconds:8.3f} {worst:12.1e} {abs(rho - reference):12.1e}",
                flush=True,
            )
        gnc2 = generalized.gnc2(torch.from_numpy(w))
        print(f"{name:24s} gnc2 = {gnc2!r}")


if __name__ == "__main__":
    main()
