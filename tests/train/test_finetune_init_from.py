"""model.init_from: the encoder starts from a state_dict file or from a finished trial's MLflow
`model/` artifact (runs:/<id>: tests/study/test_paper002_studies.py, which has an MLflow store
at hand); the loss head is not taken; mismatches are refused clearly."""

from __future__ import annotations

import pytest
import torch

from ncstudy.config.sections import ModelSpec
from ncstudy.finetune import init_encoder
from ncstudy.losses import build_loss
from ncstudy.models import build_model
from ncstudy.train import Network

SHAPE = (1, 8, 8)


def network(seed: int, **model) -> Network:
    torch.manual_seed(seed)
    encoder = build_model(ModelSpec(name="small_cnn", width=4, feature_dim=6, **model), SHAPE)
    return Network(encoder, build_loss("ce", {}, feature_dim=6, num_classes=3, seed=seed))


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_from_a_network_or_encoder_state_dict_file(tmp_path) -> None:
    trained, fresh = network(1), network(2)
    assert not same(trained.encoder, fresh.encoder)
    torch.save(trained.state_dict(), tmp_path / "net.pt")
    init_encoder(fresh.encoder, str(tmp_path / "net.pt"), None)
    assert same(trained.encoder, fresh.encoder)
    assert not same(trained.criterion, fresh.criterion)  # the head starts fresh
    torch.save(network(3).encoder.state_dict(), tmp_path / "enc.pt")
    init_encoder(fresh.encoder, str(tmp_path / "enc.pt"), None)
    assert same(network(3).encoder, fresh.encoder)


def test_init_from_mismatches_are_refused(tmp_path) -> None:
    torch.save(network(1, bottleneck="linear").state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="does not fit this encoder"):
        init_encoder(network(2).encoder, str(tmp_path / "linear.pt"), None)
    with pytest.raises(ValueError, match="no file"):
        init_encoder(network(2).encoder, str(tmp_path / "missing.pt"), None)
    with pytest.raises(ValueError, match="tracking store"):
        init_encoder(network(2).encoder, "runs:/abc", None)
