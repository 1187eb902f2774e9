"""Each loss against a direct, loop-based float64 implementation of its formula in
spec/losses.md, and against the closed forms at an exact simplex-ETF configuration."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ncstudy.losses import NCLoss, build_loss, simplex_etf
from ncstudy.losses.normalized import nonl_anchor_losses, ntce_anchor_losses

D, K = 7, 4


def lse(values: list[torch.Tensor]) -> torch.Tensor:
    """log sum exp of a list of scalars, written out (float64 inputs)."""
    top = max(float(v.detach()) for v in values)
    return top + torch.log(sum(torch.exp(v - top) for v in values))


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum()


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


# --------------------------------------------------------------------------- references


# The references take a float64 copy of the loss module (`ref = copy.deepcopy(loss).double()`)
# and use its parameters as plain data, so their gradients are the reference's too.


def ref_linear_logits(loss: NCLoss, h: torch.Tensor, i: int) -> list[torch.Tensor]:
    w, b = loss.head.weight, loss.head.bias
    return [dot(w[k], h[i]) + b[k] for k in range(K)]


def ref_ce(loss, h, y):
    total = [lse(s := ref_linear_logits(loss, h, i)) - s[y[i]] for i in range(len(y))]
    return sum(total) / len(y)


def ref_ls(loss, h, y):
    alpha, out = loss.params.alpha, []
    for i in range(len(y)):
        s = ref_linear_logits(loss, h, i)
        log_p = [s[k] - lse(s) for k in range(K)]
        out.append(-sum(((1 - alpha) * (k == y[i]) + alpha / K) * log_p[k] for k in range(K)))
    return sum(out) / len(y)


def ref_focal(loss, h, y):
    gamma, out = loss.params.gamma, []
    for i in range(len(y)):
        s = ref_linear_logits(loss, h, i)
        p = torch.exp(s[y[i]]) / sum(torch.exp(v) for v in s)
        out.append(-((1 - p) ** gamma) * torch.log(p))
    return sum(out) / len(y)


def ref_mse(loss, h, y):
    kappa, beta, out = loss.params.kappa, loss.params.beta, []
    for i in range(len(y)):
        s = ref_linear_logits(loss, h, i)
        others = sum(s[k] ** 2 for k in range(K) if k != y[i])
        out.append(kappa * (s[y[i]] - beta) ** 2 + others)
    return sum(out) / len(y)


def ref_unit_weights(loss):
    return [unit(w) for w in loss.head.weight]


def ref_normface(loss, h, y):
    w, tau, out = ref_unit_weights(loss), loss.params.temperature, []
    for i in range(len(y)):
        s = [dot(w[k], unit(h[i])) / tau for k in range(K)]
        out.append(-s[y[i]] + lse(s))
    return sum(out) / len(y)


def ref_nonl_instance(loss, h, y):
    w, tau, out = ref_unit_weights(loss), loss.params.temperature, []
    for i in range(len(y)):
        s = [dot(w[k], unit(h[i])) / tau for k in range(K)]
        out.append(-s[y[i]] + lse([s[k] for k in range(K) if k != y[i]]))
    return sum(out) / len(y)


def ref_ntce(loss, h, y, *, same_class_in_pool=True):
    w, tau, out = ref_unit_weights(loss), loss.params.temperature, []
    z = [unit(h[j]) for j in range(len(y))]
    for i in range(len(y)):
        pool = [j for j in range(len(y)) if same_class_in_pool or y[j] != y[i]]
        if not pool:
            continue
        s = {j: dot(w[y[i]], z[j]) / tau for j in range(len(y))}
        out.append(-s[i] + lse([s[j] for j in pool]))
    return sum(out) / len(out)


def ref_nonl(loss, h, y):
    return ref_ntce(loss, h, y, same_class_in_pool=False)


def ref_etf_dr(loss, h, y):
    # dot-regression on batch-normalised features (batch statistics, biased variance)
    m, bn, n, out = loss.etf, loss.feature_bn, len(y), []
    mean = sum(h[i] for i in range(n)) / n
    var = sum((h[i] - mean) ** 2 for i in range(n)) / n
    g = [(h[i] - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias for i in range(n)]
    for i in range(n):
        norm = torch.sqrt((g[i] * g[i]).sum())
        out.append(0.5 * (dot(m[y[i]], g[i]) - norm) ** 2 / norm.detach())
    return sum(out) / n


def ref_prototype(loss, h, y):
    tau, n = loss.params.temperature, len(y)
    z = [unit(h[j]) for j in range(n)]
    classes = sorted(set(y))
    mu = {c: sum(z[j] for j in range(n) if y[j] == c) / y.count(c) for c in classes}
    pi = {c: y.count(c) / n for c in classes}
    out = []
    for i in range(n):
        numerator = torch.exp(dot(z[i], mu[y[i]]) / tau)
        denominator = sum(pi[c] * torch.exp(dot(z[i], mu[c]) / tau) for c in classes)
        out.append(-torch.log(numerator / denominator))
    return sum(out) / n


def ref_supcon(loss, h, y):
    tau, n = loss.params.temperature, len(y)
    z = [unit(v) for v in loss.projector(h)]
    out = []
    for a in range(n):
        others = [q for q in range(n) if q != a]
        positives = [p for p in others if y[p] == y[a]]
        if not positives:
            continue
        log_den = lse([dot(z[a], z[q]) / tau for q in others])
        out.append(-sum(dot(z[a], z[p]) / tau - log_den for p in positives) / len(positives))
    return sum(out) / len(out)


REFERENCES = {
    "ce": ref_ce,
    "ls": ref_ls,
    "focal": ref_focal,
    "mse": ref_mse,
    "normface": ref_normface,
    "nonl_instance": ref_nonl_instance,
    "ntce": ref_ntce,
    "nonl": ref_nonl,
    "etf_dr": ref_etf_dr,
    "prototype": ref_prototype,
    "supcon": ref_supcon,
}
PARAMS = {
    "ls": {"alpha": 0.2},
    "focal": {"gamma": 2.0},
    "mse": {"kappa": 2.0, "beta": 3.0},
    "normface": {"temperature": 0.3},
    "ntce": {"temperature": 0.2},
    "nonl": {"temperature": 0.2},
    "supcon": {"temperature": 0.5, "projection_dim": 5},
    "prototype": {"temperature": 0.25},
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_loss_matches_loop_reference(name: str) -> None:
    gen = torch.Generator().manual_seed(5)
    loss = build_loss(name, PARAMS.get(name, {}), feature_dim=D, num_classes=K, seed=1)
    # a singleton class (label 3 once) exercises the dropped anchors of supcon
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 3, 2] if name != "supcon" else [0, 1, 2, 3, 0, 1, 2, 0]
    y = torch.tensor(labels)
    h = torch.randn(len(labels), D, generator=gen)
    h.requires_grad_(True)
    reference = copy.deepcopy(loss).double()
    out = loss(h, y)
    out.loss.backward()
    h64 = h.detach().double().requires_grad_(True)
    expected = REFERENCES[name](reference, h64, labels)
    expected.backward()
    torch.testing.assert_close(out.loss.double(), expected.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(h.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    # and the gradients of the loss's own parameters (classifier head, projection head)
    ref_params = dict(reference.named_parameters())
    for key, param in loss.named_parameters():
        assert param.grad is not None and ref_params[key].grad is not None, key
        torch.testing.assert_close(param.grad.double(), ref_params[key].grad, rtol=1e-4, atol=1e-5)
    assert out.skipped_anchors == (1 if name == "supcon" else 0)


# --------------------------------------------------------------------------- ETF geometry


@pytest.mark.parametrize(("d", "k"), [(3, 4), (4, 4), (16, 10), (2, 2)])
def test_simplex_etf_geometry(d: int, k: int) -> None:
    m = simplex_etf(d, k, seed=4).double()
    assert m.shape == (k, d)
    expected = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(m @ m.T, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(m.sum(0), torch.zeros(d, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(simplex_etf(d, k, seed=4), simplex_etf(d, k, seed=4))


def etf_configuration(name: str, tau: float, n_per_class: int, k: int = 5, d: int = 6):
    """A loss with a fixed ETF classifier and features z_i = w_{y_i} (scaled: must not matter)."""
    loss = build_loss(name, {"temperature": tau, "classifier": "etf"}, feature_dim=d, num_classes=k)
    y = torch.arange(k).repeat(n_per_class)
    scale = torch.linspace(0.5, 3.0, y.numel())[:, None]
    h = (loss.head.weight[y] * scale).requires_grad_(True)
    return loss, h, y


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_normface_at_etf_is_the_closed_form_minimum(tau: float) -> None:
    k = 5
    loss, h, y = etf_configuration("normface", tau, n_per_class=3, k=k)
    out = loss(h, y)
    expected = math.log(1 + (k - 1) * math.exp(-k / ((k - 1) * tau)))
    # float32 log-sum-exp of logits of size 1/tau: absolute error of a few ulps of 1/tau
    float32_abs = 8 * torch.finfo(torch.float32).eps / tau
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=float32_abs)
    out.loss.backward()  # a global minimum: stationary in h
    torch.testing.assert_close(h.grad, torch.zeros_like(h), atol=1e-5, rtol=0)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("name", ["ntce", "nonl"])
def test_ntce_nonl_at_etf_match_derived_values(name: str, tau: float) -> None:
    k, n = 5, 3
    loss, h, y = etf_configuration(name, tau, n_per_class=n, k=k)
    s_same, s_other = 1.0 / tau, -1.0 / ((k - 1) * tau)  # S_ii (and same class), other class
    if name == "ntce":  # pool: n same-class members (incl. i) and (k-1) n others
        expected = -s_same + math.log(n * math.exp(s_same) + (k - 1) * n * math.exp(s_other))
    else:  # pool: the (k-1) n other-class members only
        expected = -s_same + math.log((k - 1) * n * math.exp(s_other))
    out = loss(h, y)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    out.loss.backward()
    torch.testing.assert_close(h.grad, torch.zeros_like(h), atol=1e-5, rtol=0)


def test_nonl_has_no_same_class_repulsion_ntce_does() -> None:
    """d l_i / d z_j for a same-class j != i: zero for NONL, (p_ij / tau) w_{y_i} for NTCE."""
    gen = torch.Generator().manual_seed(2)
    tau = 0.3
    y = torch.tensor([0, 0, 1, 2, 1])
    w = F.normalize(torch.randn(3, D, generator=gen), dim=1)
    z = F.normalize(torch.randn(5, D, generator=gen), dim=1).requires_grad_(True)
    cols = torch.arange(5)
    (ntce_i,) = torch.autograd.grad(ntce_anchor_losses(w[y], z, cols, tau)[0], z)
    nonl, valid = nonl_anchor_losses(w[y], z, y, y, cols, tau)
    assert valid.all()
    (nonl_i,) = torch.autograd.grad(nonl[0], z)
    assert torch.count_nonzero(nonl_i[1]) == 0  # no same-class term at all
    p = torch.softmax(w[0] @ z.detach().T / tau, dim=0)
    torch.testing.assert_close(ntce_i[1], p[1] / tau * w[0])
    # gradient descent moves z_j away from its own class weight under NTCE
    assert (ntce_i[1] @ w[0]).item() > 0


def test_single_class_batch_gives_finite_nonl() -> None:
    loss = build_loss("nonl", {}, feature_dim=D, num_classes=K)
    h, y = torch.randn(6, D, requires_grad=True), torch.zeros(6, dtype=torch.long)
    out = loss(h, y)  # no anchor has a negative: all dropped, loss 0 with zero gradient
    assert out.loss.item() == 0.0 and out.skipped_anchors == 6
    out.loss.backward()
    assert torch.count_nonzero(h.grad) == 0
    assert torch.isfinite(loss.head.weight.grad).all()


def test_supcon_without_positives_is_finite_and_counted() -> None:
    loss = build_loss("supcon", {}, feature_dim=D, num_classes=8)
    h, y = torch.randn(8, D, requires_grad=True), torch.arange(8)  # every label once
    out = loss(h, y)
    assert out.loss.item() == 0.0 and out.skipped_anchors == 8
    out.loss.backward()
    assert torch.count_nonzero(h.grad) == 0


def test_partially_valid_batch_averages_over_valid_anchors_only() -> None:
    loss = build_loss("supcon", {"projection_dim": 4}, feature_dim=D, num_classes=K)
    y = torch.tensor([0, 0, 1, 2])  # anchors of class 1 and 2 have no positive
    h = torch.randn(4, D)
    out = loss(h, y)
    z = F.normalize(loss.embed(h), dim=1)
    s = z @ z.T / 0.1
    per_anchor = [torch.logsumexp(s[a][torch.arange(4) != a], 0) - s[a, 1 - a] for a in (0, 1)]
    assert out.skipped_anchors == 2
    torch.testing.assert_close(out.loss, (per_anchor[0] + per_anchor[1]) / 2)


# --------------------------------------------------------------------------- the queue


def ref_pool_loss(name: str, loss: NCLoss, h, y: list[int], queue_z, queue_y: list[int]):
    """The pool losses written out: anchors are the current rows (h, y); the pool is the current
    rows followed by the queued rows, which are constants (detached)."""
    tau = loss.params.temperature
    if name == "supcon":
        z = [unit(v) for v in loss.projector(h)]
    else:
        z = [unit(v) for v in h]
        w = ref_unit_weights(loss)
    pool_z, pool_y = z + list(queue_z), y + queue_y
    out = []
    for i in range(len(y)):
        if name == "supcon":
            others = [q for q in range(len(pool_y)) if q != i]
            positives = [p for p in others if pool_y[p] == y[i]]
            if not positives:
                continue
            log_den = lse([dot(z[i], pool_z[q]) / tau for q in others])
            out.append(
                -sum(dot(z[i], pool_z[p]) / tau - log_den for p in positives) / len(positives)
            )
            continue
        s = [dot(w[y[i]], pool_z[j]) / tau for j in range(len(pool_y))]
        pool = [j for j in range(len(pool_y)) if name == "ntce" or pool_y[j] != y[i]]
        out.append(-s[i] + lse([s[j] for j in pool]))
    return sum(out) / len(out)


@pytest.mark.parametrize("name", ["ntce", "nonl", "supcon"])
def test_queue_is_a_fifo_of_past_detached_embeddings(name: str) -> None:
    """Three batches of 4 rows through a queue of 6: it holds the newest 6 rows, oldest first,
    and the third batch's loss (and gradient) is that of its pool written out with a loop."""
    gen = torch.Generator().manual_seed(8)
    k = 9
    params = {"queue_size": 6} | ({"projection_dim": 5} if name == "supcon" else {})
    loss = build_loss(name, params, feature_dim=D, num_classes=k, seed=2)
    plain = build_loss(name, params | {"queue_size": 0}, feature_dim=D, num_classes=k, seed=2)
    labels = [[0, 1, 2, 3], [4, 5, 6, 7], [2, 5, 8, 8]]  # the third shares classes with the queue
    batches = [(torch.randn(4, D, generator=gen), torch.tensor(y)) for y in labels]

    def rows(h: torch.Tensor) -> torch.Tensor:  # what the loss queues: normalised embeddings
        return F.normalize(loss.embed(h) if name == "supcon" else h, dim=1).detach()

    (h1, y1), (h2, y2), (h3, y3) = batches
    torch.testing.assert_close(loss(h1, y1).loss, plain(h1, y1).loss)  # empty queue: no change
    assert loss.queue.ptr == 4 and loss.queue.filled == 4
    loss.eval()
    loss(h3, y3)  # eval mode does not enqueue
    loss.train()
    loss(h2, y2)
    # 8 rows into 6 places: the 2 oldest are gone; contents oldest first; next write at row 2
    kept_z, kept_y = torch.cat([rows(h1)[2:], rows(h2)]), torch.cat([y1[2:], y2])
    queue_z, queue_y = loss.queue.contents()
    assert torch.equal(queue_y, kept_y) and loss.queue.ptr == 2 and loss.queue.filled == 6
    torch.testing.assert_close(queue_z, kept_z)
    h3 = h3.clone().requires_grad_(True)
    third = loss(h3, y3)
    third.loss.backward()
    h64 = h3.detach().double().requires_grad_(True)
    reference = copy.deepcopy(loss).double()
    expected = ref_pool_loss(name, reference, h64, labels[2], kept_z.double(), kept_y.tolist())
    expected.backward()
    torch.testing.assert_close(third.loss.double(), expected.detach(), rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(h3.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    queue_z, queue_y = loss.queue.contents()
    assert torch.equal(queue_y, torch.cat([y2[2:], y3])) and loss.queue.ptr == 0
    torch.testing.assert_close(queue_z, torch.cat([rows(h2)[2:], rows(h3)]))
