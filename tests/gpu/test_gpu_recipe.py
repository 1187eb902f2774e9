"""Gradient-norm clipping under AMP (ncstudy/recipe.py): the threshold applies to the unscaled
gradients, and the GradScaler's step after it does not unscale them twice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ncstudy.recipe import clip_gradients

pytestmark = pytest.mark.gpu


def test_clipping_under_amp_sees_the_true_gradient(device: torch.device) -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 1).to(device)
    x = torch.randn(8, 4, device=device)
    net(x).square().sum().backward()
    true = torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item()
    net.zero_grad()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler(device.type, init_scale=1024.0)  # dry run: the CPU scaler
    scaler.scale(net(x).square().sum()).backward()
    before = [p.detach().clone() for p in net.parameters()]
    assert clip_gradients(net, opt, scaler, 0.5 * true) == pytest.approx(true, rel=1e-4)
    grads = [p.grad.detach().clone() for p in net.parameters()]
    assert torch.cat([g.flatten() for g in grads]).norm().item() == pytest.approx(0.5 * true)
    scaler.step(opt)  # the unscaled, clipped gradients: one SGD step with them
    for p, b, g in zip(net.parameters(), before, grads, strict=True):
        assert torch.allclose(p.detach(), b - 0.1 * g, atol=1e-6)
