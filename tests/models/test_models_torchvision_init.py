"""model.init_from: torchvision:<WeightsEnum>: torchvision's ResNet weights, read by its weights API
from the cache (TORCH_HOME/hub/checkpoints/<the URL's file name>), renamed into ncstudy's
ResNet: the encoder's tensors are the file's and it computes torchvision's pooled features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from ncstudy.config.sections import ModelSpec
from ncstudy.finetune import init_encoder
from ncstudy.models import build_model
from ncstudy.pretrained import renamed

torch.set_num_threads(1)


def cached_weights(torch_home: Path, weights: tvm.WeightsEnum, net: torch.nn.Module) -> Path:
    """`net`'s state_dict where torchvision's weights API looks for `weights` (no download)."""
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(weights.url).name
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("depth", "weights"),
    [(18, tvm.ResNet18_Weights.IMAGENET1K_V1), (50, tvm.ResNet50_Weights.IMAGENET1K_V2)],
)
def test_torchvision_weights_load_into_the_encoder(tmp_path, monkeypatch, depth, weights) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(depth)
    reference = getattr(tvm, f"resnet{depth}")(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so that a mix-up would show
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    cached_weights(tmp_path / "torch", weights, reference)
    pooled = 512 if depth == 18 else 2048
    encoder = build_model(ModelSpec(name=f"resnet{depth}", feature_dim=pooled), (3, 64, 64))
    init_encoder(encoder, f"torchvision:{type(weights).__name__}.{weights.name}", None)
    ours = encoder.state_dict()
    theirs = renamed(reference.state_dict(), 4)
    assert len(theirs) == len(ours) and set(theirs) == set(ours)  # every tensor, fc left out
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    reference.fc = torch.nn.Identity()
    encoder.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder(x), reference(x), atol=1e-5)


def test_torchvision_weights_that_do_not_fit_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = tvm.ResNet18_Weights.IMAGENET1K_V1
    cached_weights(tmp_path / "torch", weights, tvm.resnet18(weights=None))
    name = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    for spec, shape in [
        (ModelSpec(name="resnet18_cifar", feature_dim=512), (3, 32, 32)),  # 3x3 stem
        (ModelSpec(name="resnet18", feature_dim=10), (3, 64, 64)),  # a bottleneck to d = 10
        (ModelSpec(name="resnet34"), (3, 64, 64)),  # more blocks than ResNet-18
    ]:
        with pytest.raises(ValueError, match="does not fit this encoder.*model.width 64"):
            init_encoder(build_model(spec, shape), name, None)
    with pytest.raises(ValueError, match="names no torchvision weights.*ResNet50_Weights"):
        resnet18 = build_model(ModelSpec(name="resnet18"), (3, 64, 64))
        init_encoder(resnet18, "torchvision:Nope.X", None)
    small = build_model(ModelSpec(name="small_cnn", width=4, feature_dim=6), (3, 8, 8))
    with pytest.raises(ValueError, match="fit the ResNet encoders"):
        init_encoder(small, name, None)
