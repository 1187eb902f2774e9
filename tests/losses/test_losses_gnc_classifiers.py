"""Jiang et al.'s classifiers: softmax codes (margins against gnc2's exact QPs and Theorem 3.9's
bounds computed here with scipy), the fixed-code loss and the CMF classifier (its EMA against a
direct computation; 2 gloo workers on halves of each batch hold the rows one process gets on the
whole batch, and DDP-averaged gradients equal the single-process ones)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from scipy.special import gamma

from ncstudy.losses import build_loss, check_loss_compat
from ncstudy.losses.codes import margin_bounds, optimal_margin, softmax_code
from ncstudy.metrics.generalized import gnc2


@pytest.mark.parametrize(
    ("kind", "d", "k"), [("simplex", 5, 6), ("cross", 3, 5), ("cross", 4, 8), ("polygon", 2, 7)]
)
def test_codes_reach_the_known_optimal_margin(kind: str, d: int, k: int) -> None:
    rows = softmax_code(kind, d, k)
    assert torch.allclose(rows.norm(dim=1), torch.ones(k))
    assert gnc2(rows) == pytest.approx(optimal_margin(d, k), rel=1e-6)
    assert softmax_code("auto", d, k).shape == (k, d)


def test_theorem_3_9_bounds_bracket_the_known_optima() -> None:
    for d, k in [(2, 5), (2, 12), (2, 40), (3, 5), (3, 6), (4, 8)]:
        assert k >= math.sqrt(2 * math.pi * math.sqrt(math.e * d))  # the theorem's assumption
        lower, upper = margin_bounds(d, k)
        lo = 0.5 * (math.sqrt(math.pi) / k * gamma((d + 1) / 2) / gamma(d / 2 + 1)) ** (2 / (d - 1))
        up = 2 * (2 * math.sqrt(math.pi) / k * gamma((d + 1) / 2) / gamma(d / 2)) ** (1 / (d - 1))
        assert (lower, upper) == pytest.approx((lo, up), rel=1e-12)
        assert lower <= optimal_margin(d, k) <= upper


def test_fixed_code_loss_is_normalised_ce_on_the_assigned_rows() -> None:
    params = {"temperature": 0.2, "code": "cross", "assignment": [0, 2, 1, 3]}
    loss = build_loss("fixed_code", params, feature_dim=2, num_classes=4)
    code = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert torch.equal(loss.classifier_weights(), code[[0, 2, 1, 3]])
    assert list(loss.parameters()) == []  # nothing of the classifier is trained
    gen = torch.Generator().manual_seed(0)
    h, y = torch.randn(9, 2, generator=gen, requires_grad=True), torch.arange(9) % 4
    expected = F.cross_entropy(F.normalize(h, dim=1) @ code[[0, 2, 1, 3]].T / 0.2, y)
    torch.testing.assert_close(loss(h, y).loss, expected)
    given = {"temperature": 0.2, "code": "given", "weights": [[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]}
    rows = build_loss("fixed_code", given | {"assignment": [2, 0]}, feature_dim=2, num_classes=2)
    assert torch.equal(rows.classifier_weights(), torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize(
    ("params", "d", "k", "match"),
    [
        ({"code": "polygon"}, 3, 4, "polygon needs model.feature_dim = 2"),
        ({"code": "cross"}, 2, 5, "cross needs K <= 2 d"),
        ({}, 3, 7, "no closed-form softmax code"),
        ({"assignment": [0, 1]}, 2, 4, "params.assignment"),
        ({"code": "given", "weights": [[1.0, 0.0, 0.0]]}, 2, 2, "params.weights"),
    ],
)
def test_fixed_code_refuses_codes_that_do_not_exist(params, d, k, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_loss_compat("fixed_code", {"temperature": 0.1} | params, d, k)


def test_fixed_code_params_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="weights"):
        check_loss_compat("fixed_code", {"temperature": 0.1, "code": "given"}, 2, 2)
    with pytest.raises(ValueError, match="assignment"):
        check_loss_compat("fixed_code", {"temperature": 0.1, "assignment": [0, 0]}, 2, 2)


D, K, MOMENTUM, TAU = 3, 4, 0.8, 0.3
BATCHES = [  # (labels of the global batch of 8: worker 0 takes rows 0-3, worker 1 rows 4-7)
    [0, 1, 0, 2, 1, 1, 2, 0],
    [3, 3, 0, 1, 2, 2, 0, 3],
    [1, 1, 1, 2, 0, 0, 3, 3],
]


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, D, generator=gen), torch.tensor(BATCHES[step])


def direct_ema() -> list[torch.Tensor]:
    """The rows after each step, from the definition (first batch mean, then the EMA)."""
    rows, seen, out = torch.zeros(K, D), [False] * K, []
    for step in range(len(BATCHES)):
        h, y = batch(step)
        z = F.normalize(h, dim=1)
        for c in range(K):
            if (y == c).any():
                mean = z[y == c].mean(0)
                rows[c] = MOMENTUM * rows[c] + (1 - MOMENTUM) * mean if seen[c] else mean
                seen[c] = True
        out.append(rows.clone())
    return out


def run_cmf(rows: slice) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(rows after each step, loss per step, h gradient per step) of a fresh cmf on `rows`."""
    loss = build_loss(
        "cmf", {"temperature": TAU, "momentum": MOMENTUM}, feature_dim=D, num_classes=K
    )
    means, losses, grads = [], [], []
    for step in range(len(BATCHES)):
        h, y = batch(step)
        x = h[rows].clone().requires_grad_(True)
        out = loss(x, y[rows])
        out.loss.backward()
        means.append(loss.classifier_weights())
        losses.append(out.loss.detach())
        grads.append(x.grad.clone())
    return means, losses, grads


def test_cmf_rows_are_the_ema_of_batch_class_means_and_the_loss_uses_the_old_rows() -> None:
    means, losses, _ = run_cmf(slice(0, 8))
    for got, expected in zip(means, direct_ema(), strict=True):
        torch.testing.assert_close(got, expected)
    assert losses[0] == pytest.approx(math.log(K))  # no rows yet: every score is 0
    h, y = batch(1)
    old = F.normalize(direct_ema()[0], dim=1)
    expected = F.cross_entropy(F.normalize(h, dim=1) @ old.T / TAU, y)
    assert float(losses[1]) == pytest.approx(float(expected), rel=1e-6)
    loss = build_loss("cmf", {"temperature": TAU}, feature_dim=D, num_classes=K).eval()
    loss(*batch(0))
    assert not loss.seen.any()  # evaluation passes leave the rows alone


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    means, losses, grads = run_cmf(slice(4 * rank, 4 * rank + 4))
    for g in grads:  # DDP averages over the workers: each worker's share of the gradient
        g /= 2
    torch.save((means, losses, grads), f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_cmf_two_gloo_workers_match_one_process(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers need nothing but this module's functions (no re-import, ~1 s)
    mp.start_processes(_worker, args=(port, str(tmp_path)), nprocs=2, start_method="fork")
    out = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    single_means, single_losses, single_grads = run_cmf(slice(0, 8))
    for step in range(len(BATCHES)):
        for rank in (0, 1):
            torch.testing.assert_close(out[rank][0][step], single_means[step])
        mean_loss = (out[0][1][step] + out[1][1][step]) / 2
        torch.testing.assert_close(mean_loss, single_losses[step])
        grad = torch.cat([out[0][2][step], out[1][2][step]])
        torch.testing.assert_close(grad, single_grads[step])
