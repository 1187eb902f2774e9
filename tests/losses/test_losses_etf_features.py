"""ETF + DR on the features Yang et al. (2022) regress: batch-normalised, hence signed, encoder
outputs (a post-ReLU pool is non-negative). The BN is the loss's own head: the loss, its
predictions and the NC metrics read the same features, running statistics in evaluation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ncstudy.evaluate.passes import accuracy, nc_pass
from ncstudy.losses import build_loss

D, K, N = 6, 3, 12


def post_relu_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features (a ReLU pool's) and balanced labels."""
    gen = torch.Generator().manual_seed(seed)
    h = torch.relu(torch.randn(N, D, generator=gen, dtype=torch.float64)) + 0.5
    return h.float(), torch.arange(N) % K


def by_hand(h: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return (h - mean) / torch.sqrt(var + 1e-5)


def test_dot_regression_acts_on_signed_batch_normalised_features() -> None:
    loss = build_loss("etf_dr", {}, feature_dim=D, num_classes=K)
    h, y = post_relu_batch()
    assert (h >= 0).all()
    g = by_hand(h, h.mean(0), h.var(0, unbiased=False))
    assert (g < 0).any() and (g > 0).any()  # signed, unlike the pool
    torch.testing.assert_close(loss.embed(h), g, rtol=1e-5, atol=1e-5)
    # the spec's dot-regression 1/2 (m_y.g - |g|)^2 / |g| on the BN features, not on h
    norm = g.norm(dim=1)
    expected = (0.5 * ((loss.etf[y] * g).sum(1) - norm) ** 2 / norm).mean()
    raw = (0.5 * ((loss.etf[y] * h).sum(1) - h.norm(dim=1)) ** 2 / h.norm(dim=1)).mean()
    got = loss(h, y).loss
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.isclose(got, raw, rtol=1e-2)
    # predictions: the nearest ETF direction of the normalised BN features
    pred = (torch.nn.functional.normalize(g, dim=1) @ loss.etf.T).argmax(1)
    assert torch.equal(loss.scores(h).argmax(1), pred)


def test_only_the_loss_updates_the_running_statistics_and_eval_reads_them() -> None:
    loss = build_loss("etf_dr", {}, feature_dim=D, num_classes=K)
    bn = loss.feature_bn
    h, y = post_relu_batch()
    loss.scores(h), loss.embed(h)  # training mode: batch statistics, nothing recorded
    assert torch.equal(bn.running_mean, torch.zeros(D)) and int(bn.num_batches_tracked) == 0
    loss(h, y)
    momentum = bn.momentum
    torch.testing.assert_close(bn.running_mean, momentum * h.mean(0))
    var = (1 - momentum) + momentum * h.var(0, unbiased=True)
    torch.testing.assert_close(bn.running_var, var)
    loss.eval()
    other, _ = post_relu_batch(seed=1)
    torch.testing.assert_close(loss.embed(other), by_hand(other, bn.running_mean, bn.running_var))


def test_evaluation_passes_read_the_running_statistics_and_leave_them_alone() -> None:
    loss = build_loss("etf_dr", {}, feature_dim=D, num_classes=K)
    h, y = post_relu_batch()
    for _ in range(5):
        loss(h, y)  # training steps record running statistics
    saved = loss.feature_bn.running_mean.clone(), loss.feature_bn.running_var.clone()
    other, labels = post_relu_batch(seed=2)
    loader = DataLoader(TensorDataset(other, labels), batch_size=5)  # batches unlike training
    assert loss.training
    acc = accuracy(torch.nn.Identity(), loss, loader, torch.device("cpu"))
    g = by_hand(other, *saved)  # the eval-mode features, batch-size independent
    pred = (torch.nn.functional.normalize(g, dim=1) @ loss.etf.T).argmax(1)
    assert acc == int((pred == labels).sum()) / N
    result = nc_pass(torch.nn.Identity(), loss, loader, K, torch.device("cpu"), K)
    assert torch.equal(loss.feature_bn.running_mean, saved[0])
    assert torch.equal(loss.feature_bn.running_var, saved[1])
    # nc4 = 0 iff the prediction is the nearest class mean of the same (BN) features
    means = torch.stack([g[labels == k].mean(0) for k in range(K)])
    nearest = torch.cdist(g, means).argmin(1)
    assert result.metrics["nc4"] == pytest.approx(int((nearest != pred).sum()) / N)
