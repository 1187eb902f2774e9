"""Registry-wide tests of ncstudy.losses: every registered loss, same checks (timm style)."""

from __future__ import annotations

import io

import pytest
import torch
from pydantic import ValidationError

from ncstudy.losses import (
    LossOutput,
    NCLoss,
    build_loss,
    check_loss_compat,
    describe_losses,
    list_losses,
    loss_params_model,
    takes_temperature,
)

D, K, B = 12, 5, 10
ALL = list_losses()


def make_batch(
    loss: NCLoss, seed: int = 0, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """B images x num_views rows, view-major, every class present at least twice."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(B) % K
    y = y.repeat(loss.num_views)
    h = torch.randn(y.numel(), D, generator=gen).to(dtype)
    return h, y


def build(name: str, seed: int = 0, **params) -> NCLoss:
    loss = build_loss(name, params, feature_dim=D, num_classes=K, seed=seed)
    if loss.needs_class_means:
        gen = torch.Generator().manual_seed(99)
        loss.set_class_means(torch.randn(K, loss.embed(torch.zeros(1, D)).shape[1], generator=gen))
    if name == "cmf":  # its rows follow the training batches: set them once, then hold them
        gen = torch.Generator().manual_seed(98)
        loss.update(
            torch.nn.functional.normalize(torch.randn(K, D, generator=gen)), torch.arange(K)
        )
        loss.eval()
    return loss


def test_registry_lists_every_spec_loss() -> None:
    expected = {"ce", "ls", "focal", "mse", "normface", "ntce", "nonl", "etf_dr", "prototype"}
    assert expected | {"supcon"} <= set(ALL)
    assert sorted(ALL) == ALL
    for name in ALL:
        assert name in describe_losses()


@pytest.mark.parametrize("name", ALL)
def test_params_model_forbids_unknown_keys(name: str) -> None:
    model = loss_params_model(name)
    with pytest.raises(ValidationError):
        model.model_validate({"not_a_parameter": 1})
    assert takes_temperature(name) == ("temperature" in model.model_fields)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_finite_shapes_dtype(name: str) -> None:
    loss = build(name)
    h, y = make_batch(loss)
    h.requires_grad_(True)
    out = loss(h, y)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    assert out.skipped_anchors == 0
    out.loss.backward()
    assert h.grad is not None and h.grad.shape == h.shape and torch.isfinite(h.grad).all()
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    scores = loss.scores(h[:B].detach())
    assert scores.shape == (B, K) and scores.dtype == torch.float32
    weights = loss.classifier_weights()
    assert weights is not None and weights.shape == (K, loss.embed(h[:2]).shape[1])
    assert not weights.requires_grad


@pytest.mark.parametrize("name", ALL)
def test_deterministic_given_seed(name: str) -> None:
    a, b = build(name, seed=3), build(name, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    h, y = make_batch(a)
    assert torch.equal(a(h, y).loss, b(h, y).loss)
    assert torch.equal(a.scores(h), b.scores(h))


@pytest.mark.parametrize("name", ALL)
def test_float32_under_autocast_and_low_precision_input(name: str) -> None:
    loss = build(name)
    h, y = make_batch(loss)
    reference = loss(h, y).loss
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = loss(h, y).loss
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference)
    low = loss(h.to(torch.bfloat16), y).loss
    assert low.dtype == torch.float32 and torch.isfinite(low)
    hb = h.to(torch.bfloat16).requires_grad_(True)
    loss(hb, y).loss.backward()
    assert hb.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("name", ALL)
def test_an_all_zero_row_keeps_float16_gradients_finite(name: str) -> None:
    """A zero row has no direction; its gradient through the normalisation is bounded by
    1/NORM_EPS (F.normalize's default eps would give ~1e12, inf in float16 under AMP)."""
    loss = build(name)
    h, y = make_batch(loss)
    h[0] = 0.0
    h = h.half().requires_grad_(True)
    out = loss(h, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(h.grad).all()


def test_heads_and_views() -> None:
    assert build("supcon").num_views == 2 and build("supcon", views=4).num_views == 4
    assert all(build(n).num_views == 1 for n in ALL if n != "supcon")
    assert {n for n in ALL if build(n).needs_class_means} == {"supcon", "prototype"}
    assert build("supcon", projection_dim=32).embed(torch.zeros(3, D)).shape == (3, 32)
    ce = build("ce")
    assert ce.head.bias is not None
    etf = build("ntce", classifier="etf")
    assert not list(etf.parameters())  # fixed ETF: nothing to train
    assert "head.weight" in etf.state_dict()


def test_queue_and_etf_are_checkpointed() -> None:
    loss = build("ntce", queue_size=16)
    h, y = make_batch(loss)
    loss(h, y)
    state = loss.state_dict()
    assert int(state["queue.filled"]) == B
    assert not dict(loss.named_buffers()).keys() & {"queue.z", "queue.y"}  # not DDP-broadcast
    saved = io.BytesIO()
    torch.save(state, saved)  # the trainer's checkpoints are read back with weights_only
    saved.seek(0)
    fresh = build("ntce", queue_size=16)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(fresh(h, y).loss, loss(h, y).loss)
    assert torch.equal(fresh.queue.contents()[0], loss.queue.contents()[0])
    with pytest.raises(RuntimeError, match="queue"):
        build("ntce", queue_size=8).load_state_dict(state)
    assert "etf" in build("etf_dr").state_dict()


def test_fp_scores_require_class_means() -> None:
    loss = build_loss("supcon", {}, feature_dim=D, num_classes=K)
    assert loss.classifier_weights() is None
    with pytest.raises(RuntimeError, match="set_class_means"):
        loss.scores(torch.randn(2, D))
    with pytest.raises(ValueError, match="shape"):
        loss.set_class_means(torch.zeros(K, D))


# --------------------------------------------------------------------------- bad input


def test_unknown_loss_lists_valid_names() -> None:
    for call in (
        lambda: build_loss("arcface", {}, feature_dim=D, num_classes=K),
        lambda: loss_params_model("arcface"),
    ):
        with pytest.raises(KeyError) as err:
            call()
        assert "ntce" in str(err.value) and "supcon" in str(err.value)
        assert isinstance(err.value, ValueError)


def test_unknown_parameter_lists_valid_parameters() -> None:
    with pytest.raises(ValueError, match="tau") as err:
        build_loss("ntce", {"tau": 0.1}, feature_dim=D, num_classes=K)
    assert "temperature" in str(err.value) and "queue_size" in str(err.value)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("normface", {"temperature": 0.0}, "temperature"),
        ("supcon", {"temperature": -1.0}, "temperature"),
        ("ntce", {"queue_size": -1}, "queue_size"),
        ("supcon", {"views": 1}, "views"),
        ("ntce", {"negatives": "everywhere"}, "negatives"),
        ("ls", {"alpha": 1.0}, "alpha"),
    ],
)
def test_invalid_values_name_the_field(name: str, params: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        check_loss_compat(name, params, feature_dim=D, num_classes=K)


@pytest.mark.parametrize(
    ("name", "params"),
    [("etf_dr", {}), ("normface", {"classifier": "etf"}), ("nonl", {"classifier": "etf"})],
)
def test_etf_needs_enough_dimensions(name: str, params: dict) -> None:
    with pytest.raises(ValueError, match="model.feature_dim >= 9"):
        check_loss_compat(name, params, feature_dim=8, num_classes=10)
    with pytest.raises(ValueError, match="model.feature_dim"):
        build_loss(name, params, feature_dim=8, num_classes=10)
    build_loss(name, params, feature_dim=9, num_classes=10)  # d = K - 1 is enough


def test_forward_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        build("ce")(torch.randn(4, D), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="view-major"):
        build("supcon", views=3)(torch.randn(4, D), torch.zeros(4, dtype=torch.long))
