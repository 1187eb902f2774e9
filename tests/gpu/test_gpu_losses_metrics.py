"""Every loss and the NC metrics on the GPU against the same computation on the CPU; losses
under autocast stay float32 (spec/losses.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ncstudy.losses import build_loss, list_losses
from ncstudy.metrics import NCAccumulator, compute_nc_metrics

pytestmark = pytest.mark.gpu

B, D, K = 48, 32, 6


def inputs(num_views: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (B,), generator=gen)
    y[:K] = torch.arange(K)  # every class present
    return torch.randn(B * num_views, D, generator=gen), y.repeat(num_views)


def step(loss, h: torch.Tensor, y: torch.Tensor):
    """Value, gradient of h and gradients of the loss's parameters after one forward+backward."""
    h = h.clone().requires_grad_(True)
    out = loss(h, y)
    out.loss.backward()
    grads = [p.grad.detach().cpu() for p in loss.parameters() if p.grad is not None]
    return out.loss.detach().cpu(), h.grad.detach().cpu(), grads, out.skipped_anchors


@pytest.mark.parametrize("name", list_losses())
def test_loss_on_device_matches_cpu(name: str, device: torch.device) -> None:
    cpu_loss = build_loss(name, {}, feature_dim=D, num_classes=K, seed=3)
    dev_loss = copy.deepcopy(cpu_loss).to(device)
    h, y = inputs(cpu_loss.num_views)
    if cpu_loss.needs_class_means:  # SCL fp: prototypes from exact class means
        means = torch.nn.functional.normalize(torch.randn(K, cpu_loss.embed(h).shape[1]), dim=1)
        cpu_loss.set_class_means(means)
        dev_loss.set_class_means(means.to(device))
    ref = step(cpu_loss, h, y)
    got = step(dev_loss, h.to(device), y.to(device))
    torch.testing.assert_close(got[0], ref[0], rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=2e-3, atol=1e-5)
    assert len(got[2]) == len(ref[2])
    for a, b in zip(got[2], ref[2], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-5)
    assert got[3] == ref[3]
    scores = dev_loss.scores(h.to(device)).cpu()
    torch.testing.assert_close(scores, cpu_loss.scores(h), rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["ntce", "nonl"])
def test_queued_pool_on_device_matches_cpu(name: str, device: torch.device) -> None:
    """The FIFO queue follows the module to the device and fills the same way."""
    cpu_loss = build_loss(name, {"queue_size": 80}, feature_dim=D, num_classes=K, seed=1)
    dev_loss = copy.deepcopy(cpu_loss).to(device)
    for seed in range(3):  # the third step sees a full, wrapped queue
        h, y = inputs(1, seed)
        ref = step(cpu_loss, h, y)
        got = step(dev_loss, h.to(device), y.to(device))
        torch.testing.assert_close(got[0], ref[0], rtol=2e-4, atol=1e-5)
        torch.testing.assert_close(got[1], ref[1], rtol=2e-3, atol=1e-5)
    assert dev_loss.queue.z.device.type == device.type


@pytest.mark.parametrize("name", list_losses())
def test_loss_under_autocast_is_float32_and_close(
    name: str, device: torch.device, amp_dtype: torch.dtype
) -> None:
    """Half-precision encoder outputs: the loss computes in float32 (finite, close to fp32)."""
    loss = build_loss(name, {}, feature_dim=D, num_classes=K, seed=3).to(device)
    h, y = inputs(loss.num_views)
    h, y = h.to(device), y.to(device)
    if loss.needs_class_means:
        loss.set_class_means(torch.eye(K, loss.embed(h).shape[1], device=device))
    # on a copy: a loss with state updated by its forward (cmf's running class means) must
    # see the same state in both calls
    exact = copy.deepcopy(loss)(h, y).loss.detach()
    half = h.to(amp_dtype).requires_grad_(True)
    with torch.autocast(device_type=device.type, dtype=amp_dtype):
        out = loss(half, y)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(half.grad.float()).all()
    # the only difference is the rounding of h to half precision (3 digits for bfloat16)
    torch.testing.assert_close(out.loss.detach(), exact, rtol=3e-2, atol=3e-2)


def test_nc_metrics_on_device_match_cpu(device: torch.device) -> None:
    gen = torch.Generator().manual_seed(5)
    n, d, k = 1200, 24, 8
    labels = torch.randint(0, k, (n,), generator=gen)
    feats = 3 * torch.randn(k, d, generator=gen)[labels] + torch.randn(n, d, generator=gen)
    weights = torch.randn(k, d, generator=gen, dtype=torch.float64)
    preds = (feats.double() @ weights.T).argmax(1)
    results = []
    for dev in (torch.device("cpu"), device):
        acc = NCAccumulator(k, d, device=dev)
        for i in range(0, n, 256):
            sl = slice(i, i + 256)
            acc.update(feats[sl].to(dev), labels[sl].to(dev), preds[sl].to(dev))
        results.append(compute_nc_metrics(acc.statistics(), weights.to(dev)))
    cpu, dev = results
    assert cpu.keys() == dev.keys() and len(cpu) > 10
    for name, value in cpu.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(dev[name]), name
        else:
            assert dev[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_metrics_pass_on_device_matches_cpu(device: torch.device) -> None:
    """The worker's metrics pass (encoder forward, accumulate, reduce, metrics) on the device."""
    from ncstudy.evaluate.passes import nc_pass
    from ncstudy.models.small_cnn import SmallCNN

    torch.manual_seed(0)
    encoder = SmallCNN(3, 8, 16).eval()
    criterion = build_loss("normface", {}, feature_dim=16, num_classes=K, seed=0)
    gen = torch.Generator().manual_seed(6)
    batches = [
        (torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, K, (64,), generator=gen))
        for _ in range(4)
    ]
    ref = nc_pass(encoder, criterion, batches, K, torch.device("cpu"), K).metrics
    dev_encoder, dev_criterion = copy.deepcopy(encoder).to(device), copy.deepcopy(criterion)
    got = nc_pass(dev_encoder, dev_criterion.to(device), batches, K, device, K).metrics
    assert ref.keys() == got.keys() and len(ref) > 10
    for name, value in ref.items():  # float32 forward on two devices: ~1e-6 apart
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[name]), name
        else:
            assert got[name] == pytest.approx(value, rel=1e-3, abs=1e-5), name
