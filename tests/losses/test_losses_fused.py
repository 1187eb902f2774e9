"""The fused kernels of the normalised losses (`unit_rows`, the row contrast of NTCE/NONL)
against plain autograd compositions, the two class-row paths against each other, and NONL /
NTCE / NormFace against the source paper's own losses.py when its copy is available."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ncstudy.losses import build_loss
from ncstudy.losses.base import NORM_EPS, unit_rows
from ncstudy.losses.normalized import nonl_anchor_losses, ntce_anchor_losses

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = Path(os.environ.get("NCSTUDY_ANCHORS_DIR", ROOT / "../shared/anchors/nc_by_design"))


def test_unit_rows_matches_f_normalize_values_and_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    x[3] *= 1e-6  # below NORM_EPS: divided by the floor
    x[4] = 0.0
    x[5] *= NORM_EPS * 3 / x[5].norm()  # just above the floor
    x.requires_grad_(True)
    g = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    ours = unit_rows(x)
    ref = F.normalize(x, dim=1, eps=NORM_EPS)
    torch.testing.assert_close(ours, ref, rtol=1e-15, atol=0)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-13, atol=1e-15)
    assert torch.autograd.gradcheck(unit_rows, (x.detach()[:8].clone().requires_grad_(True),))


def reference_contrast(w, z, row_labels, y_pool, cols, tau, rows, exclude_same: bool):
    """Per-anchor losses with torch.logsumexp over an explicitly masked logit matrix."""
    logits = w @ z.T / tau
    if exclude_same:
        logits = logits.masked_fill(row_labels[:, None] == y_pool[None, :], float("-inf"))
    return torch.logsumexp(logits[rows], dim=1) - (w[rows] * z[cols]).sum(1) / tau


@pytest.mark.parametrize("exclude_same", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_row_contrast_matches_masked_logsumexp(exclude_same: bool, tau: float) -> None:
    gen = torch.Generator().manual_seed(1)
    k, n, d = 5, 13, 6
    y_pool = torch.randint(0, k, (n,), generator=gen)
    y_pool[:3] = 4  # class 4 only as anchors 0..2 ... plus other classes in the pool
    cols = torch.tensor([0, 1, 2, 5, 7, 9])
    rows = y_pool[cols]
    w = F.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    w.requires_grad_(True)
    z.requires_grad_(True)
    labels = torch.arange(k)
    if exclude_same:
        ours, valid = nonl_anchor_losses(w, z, labels, y_pool, cols, tau, rows)
        assert valid.all()
    else:
        ours = ntce_anchor_losses(w, z, cols, tau, rows)
    ref = reference_contrast(w, z, labels, y_pool, cols, tau, rows, exclude_same)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)
    g = torch.randn(cols.numel(), generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(ours, (w, z), g)
    grads_ref = torch.autograd.grad(ref, (w, z), g)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_nonl_row_without_negatives_is_dropped_with_zero_gradient() -> None:
    gen = torch.Generator().manual_seed(2)
    y_pool = torch.tensor([0, 0, 0, 1, 1])  # class 2 has no anchor; pool has classes 0, 1
    w = F.normalize(torch.randn(3, 4, generator=gen, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=1)
    z.requires_grad_(True)
    # one anchor on row 2 whose class (2) is not in the pool: has negatives; and a pool that is
    # all one class for rows 0: only class-1 members are negatives (valid)
    y_one = torch.zeros(5, dtype=torch.long)  # every pool member is class 0
    losses, valid = nonl_anchor_losses(w, z, torch.arange(3), y_one, torch.arange(5), 0.1, y_one)
    assert not valid.any() and losses.numel() == 0
    losses, valid = nonl_anchor_losses(w, z, torch.arange(3), y_pool, torch.arange(5), 0.1, y_pool)
    assert valid.all() and torch.isfinite(losses).all()
    (grad,) = torch.autograd.grad(losses.sum(), z)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("one_class_pool", [False, True])
def test_nonl_all_class_rows_by_index_match_the_mask(one_class_pool: bool) -> None:
    """row_labels None (row r is class r: exclusion by index) equals the explicit mask path."""
    gen = torch.Generator().manual_seed(7)
    k, n, d = 6, 20, 5
    y_pool = torch.zeros(n, dtype=torch.long) if one_class_pool else torch.randint(0, k, (n,))
    cols = torch.arange(0, n, 2)
    w = F.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=1)
    z = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    z.requires_grad_(True)
    rows = y_pool[cols]
    fast, valid = nonl_anchor_losses(w, z, None, y_pool, cols, 0.2, rows)
    masked, valid_ref = nonl_anchor_losses(w, z, torch.arange(k), y_pool, cols, 0.2, rows)
    assert torch.equal(valid, valid_ref) and valid.any() != one_class_pool
    torch.testing.assert_close(fast, masked, rtol=1e-14, atol=1e-14)
    if not one_class_pool:
        grads = [torch.autograd.grad(x.sum(), z)[0] for x in (fast, masked)]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", ["ntce", "nonl"])
def test_all_class_rows_and_present_class_rows_agree(name: str) -> None:
    """K <= B/2 contrasts all K rows; more classes contrast only the present ones."""
    gen = torch.Generator().manual_seed(3)
    b, d, k = 40, 8, 12
    h = torch.randn(b, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=gen)
    results = []
    for all_rows in (True, False):
        loss = build_loss(name, {"temperature": 0.2}, feature_dim=d, num_classes=k, seed=4)
        loss = loss.double()
        classes, rows = loss._class_rows(y)
        assert (classes is None) == (2 * k <= b)
        if not all_rows:  # force the other path on the same inputs
            loss._class_rows = lambda labels: torch.unique(labels, return_inverse=True)
        hh = h.clone().requires_grad_(True)
        out = loss(hh, y)
        out.loss.backward()
        results.append((out.loss.detach(), hh.grad, loss.head.weight.grad))
    for a, b_ in zip(*results, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-13, atol=1e-15)


def load_authors_losses():
    """The source paper's losses.py, loaded from its copy outside the repository."""
    path = ANCHORS / "losses.py"
    if not path.is_file():
        pytest.skip(f"authors' losses.py not found at {path} (set NCSTUDY_ANCHORS_DIR)")
    spec = importlib.util.spec_from_file_location("ncbd_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["normface", "ntce", "nonl"])
@pytest.mark.parametrize(("b", "k"), [(64, 10), (256, 100), (96, 300)])
def test_values_and_gradients_equal_the_authors(name: str, b: int, k: int) -> None:
    """float64: the same value and gradients (h and W) as the authors' code, to ~1e-13."""
    authors = load_authors_losses()
    tau, d = 0.1, 32
    fns = {
        "normface": lambda z, w, y: authors.NormFace(temperature=tau)(z, w.T, y),
        "ntce": lambda z, w, y: authors.NTCE(temperature=tau)(z, w, y),
        "nonl": lambda z, w, y: authors.NONL(temperature=tau, symmetric=True)(z, w.T, y),
    }
    gen = torch.Generator().manual_seed(b + k)
    h = torch.randn(b, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, k, (b,), generator=gen)
    ours = build_loss(name, {"temperature": tau}, feature_dim=d, num_classes=k, seed=1).double()
    h1 = h.clone().requires_grad_(True)
    value = ours(h1, y).loss
    value.backward()
    h2 = h.clone().requires_grad_(True)
    w2 = ours.head.weight.detach().clone().requires_grad_(True)
    expected = fns[name](F.normalize(h2, dim=1), F.normalize(w2, dim=1), y)
    expected.backward()
    torch.testing.assert_close(value.detach(), expected.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(h1.grad, h2.grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(ours.head.weight.grad, w2.grad, rtol=1e-12, atol=1e-15)
