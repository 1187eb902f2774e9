"""gnc2 (the one-vs-rest margin of spec/metrics.md) at and near softmax codes with K > d+1:
exact constructions, the same codes perturbed by 1e-8, and the W that ncstudy's spherical UFM
reaches for them. Near a code many points lie on one face of the hull (a degenerate QP); the
value must still be reported, and only when the solver's optimum is certified."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ncstudy.losses import build_loss
from ncstudy.metrics import NCAccumulator, compute_nc_metrics, generalized
from ncstudy.metrics.generalized import gnc2
from ncstudy.ufm import SphericalUFM, balanced_labels

PHI = (1 + math.sqrt(5)) / 2


def demicube_5() -> np.ndarray:
    """The 16 vertices of the 5-demicube ({+-1}^5 with an even number of -1), unit norm:
    pairwise cosines 1/5 and -3/5; dist(p, conv(others)) = 1 - 1/5 = 0.8."""
    rows = [s for s in itertools.product((-1.0, 1.0), repeat=5) if np.prod(s) > 0]
    return np.array(rows) / math.sqrt(5)


def schlafli_27() -> np.ndarray:
    """The 27 vertices of the 2_21 polytope in R^6 from their Gram matrix: the 27 lines on a
    cubic surface (a_i, b_i, c_ij), cosine -1/2 for lines that meet and 1/4 for skew ones;
    dist = 1 - 1/4 = 0.75."""
    lines = [("a", {i}) for i in range(6)] + [("b", {i}) for i in range(6)]
    lines += [("c", set(p)) for p in itertools.combinations(range(6), 2)]

    def meet(x, y) -> bool:
        (s, i), (t, j) = x, y
        if {s, t} == {"a", "b"}:
            return i != j
        if s == t:
            return s == "c" and not (i & j)
        return bool(i & j)  # a_i or b_i meets c_jk iff i in {j, k}

    gram = np.array(
        [[1.0 if p == q else (-0.5 if meet(p, q) else 0.25) for q in lines] for p in lines]
    )
    ev, vec = np.linalg.eigh(gram)
    assert np.sum(ev > 1e-9) == 6 and ev.min() > -1e-12  # a Gram of 27 unit vectors in R^6
    return vec[:, -6:] * np.sqrt(ev[-6:])


def cell_600() -> np.ndarray:
    """The 120 vertices of the 600-cell (unit norm): nearest neighbours at 36 degrees, and
    p's 12 neighbours span the face nearest to it, so dist = 1 - cos(pi/5) = 0.190983."""
    rows = [s * e for e in np.eye(4) for s in (-1.0, 1.0)]
    rows += [np.array(s) / 2 for s in itertools.product((-1.0, 1.0), repeat=4)]
    even = [p for p in itertools.permutations(range(4)) if _parity(p) == 0]
    for perm in even:
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            vals = [PHI * signs[0], signs[1], signs[2] / PHI, 0.0]
            x = np.zeros(4)
            x[list(perm)] = vals
            rows.append(x / 2)
    return np.array(rows)


def _parity(perm: tuple[int, ...]) -> int:
    return sum(perm[i] > perm[j] for i in range(4) for j in range(i + 1, 4)) % 2


CODES = {
    (5, 16): (demicube_5, 0.8),
    (6, 27): (schlafli_27, 0.75),
    (4, 120): (cell_600, 1 - math.cos(math.pi / 5)),
}


@pytest.mark.parametrize("dk", list(CODES))
def test_exact_softmax_codes(dk) -> None:
    build, reference = CODES[dk]
    w = build()
    assert w.shape == (dk[1], dk[0])
    assert np.allclose(np.linalg.norm(w, axis=1), 1.0)
    assert gnc2(torch.from_numpy(w)) == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dk", list(CODES))
def test_codes_perturbed_by_1e8(dk, seed: int) -> None:
    """A perturbation of size eps moves each unit row by <= 2 eps and each distance by at most
    about 2 x 2 eps: the margin must be reported and lie within that of the code's."""
    build, reference = CODES[dk]
    w = build()
    eps = 1e-8
    noise = np.random.default_rng(seed).normal(size=w.shape)
    noise *= eps / np.linalg.norm(noise, axis=1, keepdims=True)
    with np.errstate(all="raise"):
        value = gnc2(torch.from_numpy(w + noise))
    assert value is not None
    assert abs(value - reference) <= 4 * 2 * eps
    assert value != reference  # the perturbation did break the degeneracy


def ufm_weights(d: int, k: int, seed: int) -> torch.Tensor:
    """The unit class weights that the spherical UFM (NormFace, tau 0.1) reaches."""
    crit = build_loss("normface", {"temperature": 0.1}, feature_dim=d, num_classes=k, seed=seed)
    problem = SphericalUFM(crit, balanced_labels(k, 2), d, seed=seed)
    problem.run(1000)
    assert problem.accuracy() == 1.0
    return problem.weights().detach()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dk", list(CODES))
def test_what_the_spherical_ufm_reaches(dk, seed: int) -> None:
    """The UFM ends within ~1e-8 of a softmax code: gnc2 is reported, through the metrics
    pass as a trial computes it, and equals the code's margin to that precision; the Tammes
    cosine says which code it is."""
    torch.set_num_threads(1)
    d, k = dk
    _, reference = CODES[dk]
    w = ufm_weights(d, k, seed)
    labels = torch.arange(k).repeat(2)
    acc = NCAccumulator(k, d)
    acc.update(w[labels], labels, labels)
    m = compute_nc_metrics(acc.statistics(), w)
    assert m["gnc2"] == pytest.approx(reference, abs=1e-6)
    assert m["max_cos_weights"] == pytest.approx(1 - reference, abs=1e-6)


def test_pruned_minimum_equals_the_minimum_over_all_classes() -> None:
    rng = np.random.default_rng(3)
    for k, d in ((40, 3), (30, 8), (12, 20)):
        w = rng.normal(size=(k, d))
        points = generalized.span_coordinates(w / np.linalg.norm(w, axis=1, keepdims=True))
        every = min(generalized.one_vs_rest_distance(points, c) for c in range(k))
        assert gnc2(torch.from_numpy(w)) == pytest.approx(every, rel=1e-14)


def test_bounds_bracket_an_independent_enumeration() -> None:
    """Small random hulls: the certified bounds bracket the min-norm point found by enumerating
    every support (affine minimisers with non-negative weights)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        y = rng.normal(size=(7, 3)) + rng.normal(size=3)
        best = np.inf
        for size in range(1, 5):
            for sub in itertools.combinations(range(7), size):
                ys = y[list(sub)]
                kkt = np.block([[ys @ ys.T, np.ones((size, 1))], [np.ones((1, size)), 0]])
                sol = np.linalg.lstsq(kkt, np.r_[np.zeros(size), 1.0], rcond=None)[0][:size]
                if sol.min() >= -1e-12:
                    best = min(best, float(np.linalg.norm(sol @ ys)))
        lower, upper = generalized.min_norm_bounds(y)
        assert lower <= best * (1 + 1e-12) and upper >= best * (1 - 1e-12)
        assert upper - lower <= 1e-12 * upper or upper <= generalized.ZERO_TOL


def test_a_point_inside_the_others_hull_has_distance_zero() -> None:
    assert gnc2(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])) == 0.0  # a repeated row
    # A zero row (normalised to 0) lies in the hull of e1 and -e1.
    assert gnc2(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])) <= generalized.ZERO_TOL


def test_an_uncertified_optimum_is_never_reported(monkeypatch) -> None:
    """Stopped after one iteration the QP has no certificate; gnc2 warns and is omitted."""
    w = torch.from_numpy(cell_600() + 1e-8 * np.random.default_rng(5).normal(size=(120, 4)))
    points = generalized.span_coordinates(generalized.safe_normalize(w).numpy())
    with pytest.raises(generalized.SolverNotOptimal, match="not certified"):
        generalized.one_vs_rest_distance(points, 0, max_iter=1)
    with pytest.warns(RuntimeWarning, match="gnc2 omitted"):
        assert gnc2(w, max_iter=1) is None

    real = generalized.daqp.solve

    def off_by_a_little(*args, **kwargs):  # every constraint weighed in a little: the hull
        v, f, flag, info = real(*args, **kwargs)  # point moves off the optimum
        return v, f, flag, {**info, "lam": info["lam"] - 1e-6}

    monkeypatch.setattr(generalized.daqp, "solve", off_by_a_little)
    rng = np.random.default_rng(0)
    w = torch.from_numpy(rng.normal(size=(12, 3)))
    labels = torch.arange(12).repeat(2)
    acc = NCAccumulator(12, 3)
    acc.update(w[labels] + 0.1 * torch.randn(24, 3, dtype=torch.float64), labels)
    with pytest.warns(RuntimeWarning, match="gnc2 omitted"):
        m = compute_nc_metrics(acc.statistics(), w)
    assert "gnc2" not in m and "nc3" in m
