"""gnc3 as Jiang et al. define it (mean over classes of 1 - w^_k . hbar_k, hbar_k the mean of the
class's normalised features) and gnc3_centred (the earlier variant), through the statistics
pipeline, against a direct computation on the features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ncstudy.metrics.compute import compute_nc_metrics
from ncstudy.metrics.stats import NCAccumulator


def features(k: int, d: int, n: int, noise: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    y = torch.arange(k).repeat_interleave(n)
    h = means[y] + noise * torch.randn(k * n, d, generator=gen, dtype=torch.float64)
    w = means + 0.5 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    return h, y, w


def metrics(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int) -> dict[str, float]:
    acc = NCAccumulator(k, h.shape[1], dtype=torch.float64)
    acc.update(h, y)
    return compute_nc_metrics(acc.statistics(), w)


@pytest.mark.parametrize(("k", "d"), [(100, 10), (4, 2), (10, 32)])
def test_gnc3_matches_the_papers_formula(k: int, d: int) -> None:
    h, y, w = features(k, d, n=6, noise=1.0)
    z = F.normalize(h, dim=1)
    hbar = torch.stack([z[y == c].mean(0) for c in range(k)])
    expected = (1 - (F.normalize(w, dim=1) * hbar).sum(1)).mean()
    mu = torch.stack([h[y == c].mean(0) for c in range(k)])
    centred = mu - h.mean(0)
    expected_centred = (1 - F.cosine_similarity(w, centred, dim=1)).mean()
    got = metrics(h, y, w, k)
    assert got["gnc3"] == pytest.approx(float(expected), rel=1e-9)
    assert got["gnc3_centred"] == pytest.approx(float(expected_centred), rel=1e-9)
    assert got["gnc3"] != pytest.approx(got["gnc3_centred"], rel=1e-3)  # two different metrics


def test_gnc3_is_zero_at_collapse_onto_the_classifier_and_not_centred() -> None:
    """Features exactly on (scaled) unit classifier rows: gnc3 = 0 even when the rows do not sum
    to zero (gnc3 is uncentred); the centred variant is not 0 there."""
    w = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64))
    y = torch.arange(3).repeat_interleave(4)
    h = 2.5 * w[y]
    got = metrics(h, y, w, 3)
    assert got["gnc3"] == pytest.approx(0.0, abs=1e-12)
    assert got["gnc3_centred"] > 0.1
