"""UFM theory checks (spec/ufm.md): the production losses and metrics, optimised in the UFM,
reproduce the closed-form predictions. Each case runs in about a second (float64, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.special import i0

from ncstudy.losses import build_loss
from ncstudy.metrics import NCAccumulator, compute_nc_metrics
from ncstudy.ufm import RegularizedUFM, SphericalUFM, balanced_labels, tangent
from ncstudy.ufm import theory as th


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def spherical(loss: str, K: int, d: int, n: int, tau: float, seed: int = 0, **kw) -> SphericalUFM:
    crit = build_loss(loss, {"temperature": tau}, feature_dim=d, num_classes=K, seed=seed)
    return SphericalUFM(crit, balanced_labels(K, n), d, seed=seed, **kw)


def metrics(p: SphericalUFM | RegularizedUFM, K: int) -> dict[str, float]:
    acc = NCAccumulator(K, p.features.shape[1])
    acc.update(p.features, p.labels, p.predictions())
    return compute_nc_metrics(acc.statistics(), p.weights())


def off_diagonal_cosines(w: torch.Tensor) -> torch.Tensor:
    u = torch.nn.functional.normalize(w, dim=1)
    c = u @ u.T
    return c[~torch.eye(len(w), dtype=torch.bool)]


def loss(p: SphericalUFM | RegularizedUFM) -> float:
    return float(p.loss().detach())


# ----------------------------------------------------------------------------- mechanics


def test_tangent_projection_and_retraction_keep_points_on_the_sphere() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    v = tangent(x, torch.randn(7, 4, generator=g, dtype=torch.float64))
    assert (v * x).sum(1).abs().max() < 1e-14
    p = spherical("normface", 3, 4, 2, 0.5)
    for _ in range(20):
        p.step()
    assert (p.features.norm(dim=1) - 1).abs().max() < 1e-12
    assert (p.weights().norm(dim=1) - 1).abs().max() < 1e-12
    assert (p.criterion.head.weight.norm(dim=1) - 1).abs().max() < 1e-12


def test_armijo_never_increases_the_objective() -> None:
    p = spherical("ntce", 4, 3, 3, 0.2, seed=3)
    values = [loss(p)] + [p.step().objective for _ in range(60)]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert values[-1] < values[0]


def test_losses_keep_float64_inputs_in_float64_and_float32_in_float32() -> None:
    crit = build_loss("normface", {"temperature": 0.1}, feature_dim=3, num_classes=2)
    y = torch.tensor([0, 1])
    assert crit(torch.randn(2, 3), y).loss.dtype == torch.float32
    assert crit.double()(torch.randn(2, 3, dtype=torch.float64), y).loss.dtype == torch.float64


# ----------------------------------------------------------------------------- K <= d+1


@pytest.mark.parametrize(("K", "d", "tau"), [(3, 3, 1.0), (4, 5, 0.5), (5, 6, 0.2), (6, 6, 0.3)])
def test_normface_reaches_the_yaras_lower_bound(K: int, d: int, tau: float) -> None:
    p = spherical("normface", K, d, 4, tau)
    p.run(400)
    bound = math.log1p((K - 1) * math.exp(-K / ((K - 1) * tau)))  # Yaras et al. Theorem 1
    assert loss(p) == pytest.approx(bound, abs=1e-6)
    assert loss(p) >= bound - 1e-12


@pytest.mark.parametrize("tau", [0.5, 0.1])
@pytest.mark.parametrize("name", ["normface", "ntce", "nonl"])
def test_simplex_etf_geometry_and_minimum_value(name: str, tau: float) -> None:
    # At tau = 0.1, ntce's within-class spread is held only by other-class terms of relative
    # size exp(-(1 + 1/(K-1))/tau) ~ 2e-6: gradient descent creeps there, L-BFGS converges.
    K, d, n = 4, 5, 4
    p = spherical(name, K, d, n, tau, seed=1)
    p.run(1000)
    # S_ii = 1/tau, S_ij = -1/((K-1) tau): n same-class and (K-1) n other-class pool members
    own, other = 1 / tau, -1 / ((K - 1) * tau)
    expected = {
        "normface": math.log1p((K - 1) * math.exp(other - own)),
        "ntce": math.log(n * math.exp(own) + (K - 1) * n * math.exp(other)) - own,
        "nonl": math.log((K - 1) * n) + other - own,
    }[name]
    assert loss(p) == pytest.approx(expected, abs=1e-6)
    assert off_diagonal_cosines(p.weights()) == pytest.approx(
        torch.full((K * (K - 1),), -1 / (K - 1), dtype=torch.float64), abs=1e-4
    )
    m = metrics(p, K)
    assert m["nc1"] < 1e-6
    assert m["align_weight_mean"] < 1e-6  # w_k = mu^_k
    assert m["erank_inter"] == pytest.approx(K - 1, abs=1e-4)
    assert m["gnc2"] == pytest.approx(K / (K - 1), abs=1e-4)
    assert m["max_cos_weights"] == pytest.approx(-1 / (K - 1), abs=1e-4)
    assert p.accuracy() == 1.0


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_supcon_collapses_to_a_simplex_etf(tau: float) -> None:
    """Graf et al. 2021: balanced SupCon on the sphere (d >= K-1) is minimised by within-class
    collapse onto a simplex ETF. There, with the whole set as the batch, every anchor has n-1
    positives at cosine 1 and (K-1) n others at -1/(K-1) among its N-1 contrasts:
    L = log((n-1) e^{1/tau} + (K-1) n e^{-1/((K-1) tau)}) - 1/tau."""
    K, d, n = 4, 5, 4
    crit = build_loss(
        "supcon", {"temperature": tau, "projection": "none"}, feature_dim=d, num_classes=K
    )
    p = SphericalUFM(crit, balanced_labels(K, n), d, seed=0)
    p.run(1000)
    own, other = 1 / tau, -1 / ((K - 1) * tau)
    expected = math.log((n - 1) * math.exp(own) + (K - 1) * n * math.exp(other)) - own
    assert loss(p) == pytest.approx(expected, abs=1e-9)
    means = torch.stack([p.features[p.labels == k].mean(0) for k in range(K)])
    unit_means = torch.nn.functional.normalize(means, dim=1)
    assert off_diagonal_cosines(means) == pytest.approx(
        torch.full((K * (K - 1),), -1 / (K - 1), dtype=torch.float64), abs=1e-5
    )
    assert float((p.features - unit_means[p.labels]).norm(dim=1).max()) < 1e-5


def test_log_loss_reaches_the_bound_at_a_sharp_temperature() -> None:
    K, d, n, tau = 4, 5, 3, 0.05
    bound = math.log1p((K - 1) * math.exp(-K / ((K - 1) * tau)))  # about 8e-12
    for memory in (0, 10):  # gradient descent and L-BFGS
        plain = spherical("normface", K, d, n, tau, memory=memory)
        logged = spherical("normface", K, d, n, tau, memory=memory, log_loss=True)
        plain.run(300)
        logged.run(300)
        assert loss(logged) == pytest.approx(bound, rel=1e-4)
        cosines = off_diagonal_cosines(logged.weights())
        assert cosines.max() == pytest.approx(-1 / (K - 1), abs=1e-4)
        if memory == 0:  # why the option exists: gradient descent's steps vanish with the loss
            assert loss(plain) > 10 * bound
        else:  # L-BFGS rescales its steps to the curvature: it gets there without the log
            assert loss(plain) == pytest.approx(bound, rel=1e-4)


@pytest.mark.parametrize(("K", "n", "tau"), [(2, 1, 1.0), (4, 3, 0.5), (7, 2, 0.1)])
def test_theory_values_match_a_term_by_term_sum_at_an_explicit_etf(K: int, n: int, tau: float):
    """What `ufm/theory_loss` logs (normface_bound, ntce_etf_value, nonl_etf_value) against the
    losses summed term by term in plain Python at an explicit simplex ETF, z_i = m_{y_i}."""
    # rows of sqrt(K/(K-1)) (I - 11^T/K): unit vectors with pairwise cosines -1/(K-1)
    m = [[math.sqrt(K / (K - 1)) * ((i == j) - 1 / K) for j in range(K)] for i in range(K)]
    cos = [
        [sum(a * b for a, b in zip(m[i], m[j], strict=True)) for j in range(K)] for i in range(K)
    ]
    for i in range(K):
        for j in range(K):
            assert cos[i][j] == pytest.approx(1.0 if i == j else -1 / (K - 1), abs=1e-12)
    labels = [k for k in range(K) for _ in range(n)]
    ntce = nonl = normface = 0.0
    for yi in labels:  # anchor i (z_i = m_{y_i}), pool j over all samples
        own = cos[yi][yi] / tau
        ntce += -own + math.log(sum(math.exp(cos[yi][yj] / tau) for yj in labels))
        nonl += -own + math.log(sum(math.exp(cos[yi][yj] / tau) for yj in labels if yj != yi))
        normface += -own + math.log(sum(math.exp(cos[c][yi] / tau) for c in range(K)))
    assert th.ntce_etf_value(K, n, tau) == pytest.approx(ntce / len(labels), rel=1e-12)
    assert th.nonl_etf_value(K, n, tau) == pytest.approx(nonl / len(labels), rel=1e-12)
    assert th.normface_bound(K, tau) == pytest.approx(normface / len(labels), rel=1e-12)


def test_nonl_merges_two_classes_for_six_classes_on_the_circle() -> None:
    """NONL has no softmax-code optimum at (K, d, tau) = (6, 2, 0.1). The regular hexagon with
    features on their weights is stationary, with the value written out below, but a saddle:
    the optimum merges two classes (weights and features), which lowers the loss although one
    class is then misclassified (5/6 training accuracy). No softmax term ties a feature to its
    own class against the others, so nothing forbids two classes sharing a place."""
    K, d, n, tau = 6, 2, 4, 0.1
    near = sum(math.exp(math.cos(2 * math.pi * k / K) / tau) for k in range(1, K))
    hexagon_value = -1 / tau + math.log(n * near)  # -w_k.z_i/tau + lse over other classes
    p = spherical("nonl", K, d, n, tau)
    angles = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
    hexagon = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    with torch.no_grad():
        p.criterion.head.weight.copy_(hexagon)
    p.features = hexagon[p.labels].clone()
    assert loss(p) == pytest.approx(hexagon_value, abs=1e-12)
    assert p.step().grad_norm < 1e-12  # stationary
    finals = []
    for seed in (0, 1):
        q = spherical("nonl", K, d, n, tau, seed=seed)
        q.run(1000)
        finals.append(loss(q))
        assert loss(q) < hexagon_value - 0.2
        assert q.accuracy() == pytest.approx(5 / 6)
        means = torch.stack([q.features[q.labels == k].mean(0) for k in range(K)])
        assert off_diagonal_cosines(means).max() > 1 - 1e-9  # two classes share a place
        assert off_diagonal_cosines(q.weights()).max() > 1 - 1e-9
    assert finals[0] == pytest.approx(finals[1], abs=1e-9)  # the same optimum from both seeds


# ----------------------------------------------------------------------------- K > d+1


def best_of_two_seeds(K: int, d: int, n: int, tau: float, iterations: int) -> SphericalUFM:
    runs = []
    for seed in (0, 1):
        p = spherical("normface", K, d, n, tau, seed=seed)
        p.run(iterations)
        runs.append(p)
    return min(runs, key=loss)


@pytest.mark.parametrize(
    ("K", "d", "gnc2", "max_cos"),
    [
        (5, 2, 1 - math.cos(2 * math.pi / 5), math.cos(2 * math.pi / 5)),  # regular pentagon
        (7, 2, 1 - math.cos(2 * math.pi / 7), math.cos(2 * math.pi / 7)),  # regular heptagon
        (6, 3, 1.0, 0.0),  # octahedron
        (12, 3, 1 - 1 / math.sqrt(5), 1 / math.sqrt(5)),  # icosahedron
    ],
)
def test_softmax_codes_for_k_above_d_plus_one(K: int, d: int, gnc2: float, max_cos: float):
    p = best_of_two_seeds(K, d, 2, 0.1, 1000)
    m = metrics(p, K)
    assert m["gnc2"] == pytest.approx(gnc2, abs=1e-4)
    assert m["max_cos_weights"] == pytest.approx(max_cos, abs=1e-4)
    assert m["nc1"] < 1e-6
    assert p.accuracy() == 1.0


def test_yaras_table_1_circle_with_100_classes() -> None:
    p = spherical("normface", 100, 2, 5, 1.0)
    p.run(400)
    assert loss(p) == pytest.approx(math.log(100 * i0(1.0)) - 1, abs=1e-3)  # Yaras et al.
    assert round(loss(p), 2) == 3.84
    # and the exact regular 100-gon value (features on their weights)
    angles = torch.arange(100, dtype=torch.float64) * 2 * math.pi / 100
    assert loss(p) == pytest.approx(float(torch.logsumexp(torch.cos(angles), 0) - 1), abs=1e-6)
    assert p.accuracy() == 1.0


# ----------------------------------------------------------------------------- regularised


# mse's common-shift mode (bias vs. global feature mean) contracts at a rate ~ lambda_H, so its
# penalties are larger to converge in seconds.
PENALTIES = {
    "ce": (5e-2, 1e-2, 1e-2),
    "ls": (5e-2, 1e-2, 1e-2),
    "focal": (5e-2, 1e-2, 1e-2),
    "mse": (2e-1, 4e-2, 4e-2),
}


@pytest.mark.parametrize("name", ["ce", "ls", "focal", "mse"])
def test_regularized_ufm_simplex_etf_and_reduced_problem(name: str) -> None:
    K, d, n = 4, 8, 5
    lw, lh, lb = PENALTIES[name]
    crit = build_loss(name, {}, feature_dim=d, num_classes=K, seed=0)
    p = RegularizedUFM(crit, balanced_labels(K, n), d, lambda_w=lw, lambda_h=lh, lambda_b=lb)
    p.run(2500)
    w, h = p.weights(), p.features
    # W: simplex ETF with equal norms; class means centred; h_{k,i} = sqrt(lW/(lH n)) w_k
    norms = w.norm(dim=1)
    assert (norms / norms.mean() - 1).abs().max() < 1e-5
    assert off_diagonal_cosines(w) == pytest.approx(
        torch.full((K * (K - 1),), -1 / (K - 1), dtype=torch.float64), abs=1e-5
    )
    assert h.mean(0).norm() < 1e-5 * h.norm(dim=1).mean()
    c = math.sqrt(lw / (lh * n))
    assert (h - c * w[p.labels]).abs().max() < 1e-5 * c * norms.mean()
    # the objective equals the independent one-dimensional solve in E = <w_k, h_k>
    e_star, objective = th.regularized_optimum(
        name, num_classes=K, n_per_class=n, lambda_w=lw, lambda_h=lh, lambda_b=lb
    )
    assert e_star > 0  # not the collapsed zero solution
    assert float(p.objective().detach()) == pytest.approx(objective, rel=1e-8)
    assert float((w[p.labels] * h).sum(1).mean()) == pytest.approx(e_star, rel=1e-5)
    m = metrics(p, K)
    assert m["nc1"] < 1e-8
    assert p.accuracy() == 1.0


def test_reduced_problem_matches_a_direct_evaluation_at_an_etf_point() -> None:
    """The reduced objective is the full objective at (W = a M, H = c W, b = 0) for CE."""
    K, n, lw, lh = 3, 2, 0.1, 0.05
    e = 1.7
    c = math.sqrt(lw / (lh * n))
    a2 = e / c  # ||w_k||^2
    logits = torch.full((K,), -e / (K - 1), dtype=torch.float64)
    logits[0] = e
    ce = float(torch.logsumexp(logits, 0) - logits[0])
    direct = ce + lw / 2 * K * a2 + lh / 2 * K * n * c * c * a2
    reduced = th.regularized_reduced_objective(
        "ce", e, num_classes=K, n_per_class=n, lambda_w=lw, lambda_h=lh, lambda_b=0.3
    )
    assert reduced == pytest.approx(direct, rel=1e-12)
