"""NC metrics on constructed configurations whose values theory gives (spec/metrics.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncstudy.metrics import NCAccumulator, compute_nc_metrics
from ncstudy.metrics.generalized import gnc2


def random_rotation(d: int, seed: int) -> torch.Tensor:
    """A random orthogonal d x d matrix (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


def simplex_etf(k: int, d: int, seed: int = 0) -> torch.Tensor:
    """K unit vectors in R^d with pairwise cosine -1/(K-1), randomly rotated (needs d >= K-1)."""
    e = torch.eye(k, dtype=torch.float64) - 1.0 / k
    e = e / e.norm(dim=1, keepdim=True)
    # Express the rows in an orthonormal basis of their (K-1)-dim span, then embed in R^d.
    _, _, vh = torch.linalg.svd(e)
    coords = e @ vh[: k - 1].T
    padded = torch.zeros(k, d, dtype=torch.float64)
    padded[:, : k - 1] = coords
    return padded @ random_rotation(d, seed).T


def harmonic_frame(k: int, d: int) -> torch.Tensor:
    """Unit-norm, zero-sum tight frame of K vectors in R^d (d even) from frequencies 1..d/2."""
    j = torch.arange(k, dtype=torch.float64)[:, None]
    freqs = torch.arange(1, d // 2 + 1, dtype=torch.float64)[None, :]
    angles = 2 * math.pi * j * freqs / k
    frame = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return frame / math.sqrt(d // 2)


def collapsed_stats(means: torch.Tensor, per_class: int = 3, predictions: bool = True):
    """Statistics of features sitting exactly on their class means."""
    k, d = means.shape
    labels = torch.arange(k).repeat_interleave(per_class)
    acc = NCAccumulator(k, d)
    acc.update(means[labels], labels, labels if predictions else None)
    return acc.statistics()


@pytest.mark.parametrize(("k", "d"), [(10, 9), (10, 16), (4, 3)])
def test_exact_simplex_etf(k: int, d: int) -> None:
    means = 2.5 * simplex_etf(k, d)
    weights = 0.7 * means
    m = compute_nc_metrics(collapsed_stats(means), weights)
    for name in (
        "nc1",
        "gnc1",
        "nc2_equinorm_means",
        "nc2_equinorm_weights",
        "nc2_equiangle_means",
        "nc2_equiangle_weights",
        "nc2_maxangle_means",
        "nc2_maxangle_weights",
        "nc2_etf_dist_means",
        "nc2_etf_dist_weights",
        "nc3",
        "gnc3",
        "nc4",
        "erank_intra",
        "align_weight_mean",
        "align_weight_inst",
        "align_inst_mean",
        "hdr",
    ):
        assert m[name] == pytest.approx(0.0, abs=1e-9), name
    assert m["nc3_cos"] == pytest.approx(1.0, abs=1e-12)
    assert m["erank_inter"] == pytest.approx(k - 1, rel=1e-9)
    assert m["erank_weights"] == pytest.approx(k - 1, rel=1e-9)
    assert m["max_cos_weights"] == pytest.approx(-1.0 / (k - 1), abs=1e-12)
    assert m["gnc2"] == pytest.approx(k / (k - 1), rel=1e-9)
    # K_W = K_M = G with unit diagonal and -1/(K-1) off it: H = log(K-1) for both. G o G has
    # off-diagonal a = 1/(K-1)^2, so (G o G)/K has eigenvalues (1-a)/K (K-1 times), (1-a+Ka)/K.
    a = 1.0 / (k - 1) ** 2
    lam = np.array([(1 - a) / k] * (k - 1) + [(1 - a + k * a) / k])
    h_joint = float(-(lam * np.log(lam)).sum())
    mir = (2 * math.log(k - 1) - h_joint) / math.log(k - 1)
    assert m["mir"] == pytest.approx(mir, abs=1e-7)


def test_mir_at_etf_matches_spec_numbers() -> None:
    for k, expected in ((10, 0.952), (100, 0.998)):
        means = simplex_etf(k, k)
        m = compute_nc_metrics(collapsed_stats(means, per_class=1), means)
        assert m["mir"] == pytest.approx(expected, abs=5e-4)


def test_means_plus_isotropic_noise_nc1() -> None:
    """h = mu_k +- sigma sqrt(d) e_i: class means exact, Sigma_W = sigma^2 I exactly.

    Sigma_B of an ETF of radius r has eigenvalue r^2/(K-1) on K-1 dims, so
    nc1 = sigma^2 (K-1) (K-1) / r^2 / K.
    """
    k, d, r, sigma = 5, 7, 3.0, 0.4
    means = r * simplex_etf(k, d, seed=1)
    basis = random_rotation(d, 2)
    offsets = sigma * math.sqrt(d) * torch.cat([basis, -basis])  # (2d, d)
    feats = (means[:, None, :] + offsets[None, :, :]).reshape(-1, d)
    labels = torch.arange(k).repeat_interleave(2 * d)
    acc = NCAccumulator(k, d)
    acc.update(feats, labels)
    m = compute_nc_metrics(acc.statistics(), None)
    assert m["nc1"] == pytest.approx(sigma**2 * (k - 1) ** 2 / (r**2 * k), rel=1e-10)
    assert "nc3" not in m and "gnc2" not in m  # weight metrics omitted without weights


def test_noise_orthogonal_to_means() -> None:
    """Noise +-s e_j in the m directions orthogonal to the ETF span: exact z statistics.

    z = (mu_k +- s e_j)/c with c = sqrt(r^2 + s^2): the class mean of z is mu_k/c, so mu^ is the
    unit ETF (MIR/HDR as at the ETF); Cov(z | k) = (s^2/c^2)/m on m dims, so erank_intra = m;
    ||z - mu^||^2 = 2 - 2 r/c for every sample.
    """
    k, d, r, s = 6, 9, 2.0, 0.5
    m_dirs = d - (k - 1)
    rot = random_rotation(d, 3)
    etf = simplex_etf(k, k - 1, seed=4)
    means = torch.zeros(k, d, dtype=torch.float64)
    means[:, : k - 1] = r * etf
    noise = torch.zeros(2 * m_dirs, d, dtype=torch.float64)
    for j in range(m_dirs):
        noise[2 * j, k - 1 + j], noise[2 * j + 1, k - 1 + j] = s, -s
    feats = ((means[:, None, :] + noise[None]).reshape(-1, d)) @ rot.T
    labels = torch.arange(k).repeat_interleave(2 * m_dirs)
    weights = means @ rot.T
    acc = NCAccumulator(k, d)
    acc.update(feats, labels)
    m = compute_nc_metrics(acc.statistics(), weights)
    c = math.sqrt(r**2 + s**2)
    assert m["erank_intra"] == pytest.approx(m_dirs, rel=1e-9)
    assert m["erank_inter"] == pytest.approx(k - 1, rel=1e-9)
    assert m["align_inst_mean"] == pytest.approx(2 - 2 * r / c, rel=1e-9)
    assert m["align_weight_inst"] == pytest.approx(2 - 2 * r / c, rel=1e-9)
    assert m["align_weight_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["hdr"] == pytest.approx(0.0, abs=1e-9)
    etf_m = compute_nc_metrics(collapsed_stats(etf), etf)
    assert m["mir"] == pytest.approx(etf_m["mir"], abs=1e-9)


@pytest.mark.parametrize("k", [3, 5, 7, 12])
def test_regular_polygon_gnc2(k: int) -> None:
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    polygon = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    expected = 1 - math.cos(2 * math.pi / k)
    assert gnc2(3.0 * polygon) == pytest.approx(expected, rel=1e-9)


def test_octahedron_gnc2() -> None:
    octahedron = torch.cat([torch.eye(3), -torch.eye(3)]).double() @ random_rotation(3, 5)
    assert gnc2(octahedron) == pytest.approx(1.0, rel=1e-9)


def test_icosahedron_gnc2() -> None:
    phi = (1 + math.sqrt(5)) / 2
    verts = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            verts += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    ico = torch.tensor(verts, dtype=torch.float64)
    assert gnc2(ico) == pytest.approx(1 - 1 / math.sqrt(5), rel=1e-9)


@pytest.mark.parametrize(("k", "d"), [(7, 2), (9, 4), (12, 6)])
def test_tight_frame_etf_distance_floor(k: int, d: int) -> None:
    """K > d+1: a unit-norm zero-sum tight frame sits at sqrt(2 - 2 sqrt(d/(K-1))) from E."""
    frame = harmonic_frame(k, d)
    m = compute_nc_metrics(collapsed_stats(frame), frame)
    floor = math.sqrt(2 - 2 * math.sqrt(d / (k - 1)))
    assert m["nc2_etf_dist_means"] == pytest.approx(floor, rel=1e-9)
    assert m["nc2_etf_dist_weights"] == pytest.approx(floor, rel=1e-9)
    # Any zero-sum equal-norm configuration: the mean pairwise cosine is -1/(K-1).
    cos = frame @ frame.T
    assert float(cos[torch.triu_indices(k, k, 1).unbind()].mean()) == pytest.approx(-1 / (k - 1))
    assert m["nc2_equinorm_means"] == pytest.approx(0.0, abs=1e-9)


def constant_gram_entropy(k: int, a: float) -> float:
    """H of G/K for G = (1-a) I + a 11^T (unit diagonal, every off-diagonal a): its
    eigenvalues are 1-a (K-1 times) and 1+(K-1)a, clamped at 1e-10 like the spec's H."""
    lam = np.array([(1 - a) / k] * (k - 1) + [(1 + (k - 1) * a) / k])
    lam = np.maximum(lam, 1e-10)
    return float(-(lam * np.log(lam)).sum())


def test_information_metrics_with_an_exactly_zero_global_mean() -> None:
    """Cross-polytope e1, -e1, e2, -e2 (balanced): the global mean of z is exactly 0, so the
    paper's normalise(0) must stay 0 (no NaN) and both variants use v_k = mu^_k. K_M = K_W has
    eigenvalues 2, 2, 0, 0 and so has K_W o K_M: H = log 2 for all three, MI = log 2, MIR = 1,
    HDR = 0."""
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    stats = collapsed_stats(means)
    assert torch.equal(stats.sum_normalized.sum(0), torch.zeros(2, dtype=torch.float64))
    m = compute_nc_metrics(stats, means)
    h = float(-2 * 0.5 * math.log(0.5) - 2 * 1e-10 * math.log(1e-10))  # K/4: 1/2, 1/2, 0, 0
    assert m["mir"] == m["mir_paper"] == pytest.approx((2 * h - h) / h, abs=1e-12)
    assert m["hdr"] == m["hdr_paper"] == 0.0


def test_information_metrics_paper_variant_with_a_nonzero_global_mean() -> None:
    """Class means e_1, e_2, e_3 (balanced, collapsed), classifier rows W = the centred means.

    ncstudy's v_k = normalise(e_k - 1/3): pairwise cosine -1/2, like W's rows, so K_W = K_M and
    HDR = 0; K_W o K_M has off-diagonal 1/4. The paper's v_k = normalise(e_k - g^), g^ = 1/sqrt3
    (the normalised global mean): pairwise cosine c = (1 - 2/sqrt3)/(2 - 2/sqrt3), and K_W o K_M
    has off-diagonal -c/2. Every Gram here has constant off-diagonal: closed-form entropies.
    """
    k = 3
    means = torch.eye(k, dtype=torch.float64)
    weights = means - means.mean(0, keepdim=True)
    m = compute_nc_metrics(collapsed_stats(means), weights)

    h_w = constant_gram_entropy(k, -0.5)  # = H(K_M) of ncstudy's variant, = log 2 up to clamp
    h_joint = constant_gram_entropy(k, 0.25)
    assert m["hdr"] == pytest.approx(0.0, abs=1e-12)
    assert m["mir"] == pytest.approx((2 * h_w - h_joint) / h_w, rel=1e-10)
    assert m["mir"] == pytest.approx(0.5, abs=1e-8)  # (2 log 2 - 1.5 log 2) / log 2

    c = (1 - 2 / math.sqrt(3)) / (2 - 2 / math.sqrt(3))
    h_m = constant_gram_entropy(k, c)
    h_joint_paper = constant_gram_entropy(k, -0.5 * c)
    mi = h_w + h_m - h_joint_paper
    assert m["mir_paper"] == pytest.approx(mi / min(h_w, h_m), rel=1e-10)
    assert m["hdr_paper"] == pytest.approx(abs(h_w - h_m) / max(h_w, h_m), rel=1e-10)
    assert m["hdr_paper"] > 0.3  # the paper's centring leaves HDR far from 0 here
