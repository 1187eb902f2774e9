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


def test_the_worker_loop_fine_tunes_a_cmf_trial_from_a_file(tmp_path) -> None:
    """train_loop loads model.init_from before the first step: at a vanishing lr the trained
    encoder's parameters are the file's (a fresh encoder's differ by far more); the CMF rows are
    set from the training batches."""
    from ncstudy.config import expand, parse_study  # the schema: only this test builds a trial
    from ncstudy.context import LocalContext
    from ncstudy.train import train_loop

    model = {"name": "small_cnn", "width": 4, "feature_dim": 6, "bottleneck": "linear"}
    torch.manual_seed(7)
    pretrained = build_model(ModelSpec(**model), SHAPE)
    torch.save(pretrained.state_dict(), tmp_path / "enc.pt")
    study = {
        "name": "ft",
        "dataset": {"name": "digits", "image_size": 8, "classes": [0, 1, 2]},
        "model": {**model, "init_from": str(tmp_path / "enc.pt")},
        "train": {"epochs": 1, "lr": 1e-9, "weight_decay": 0.0, "momentum": 0.0},
        "losses": [{"name": "cmf"}],
        "grid": {"temperature": [0.1], "batch_size": [64]},
        "evaluation": {"every": 1, "nc_metrics": False},
    }
    torch.manual_seed(8)
    other = build_model(ModelSpec(**model), SHAPE)
    assert any(
        (p - q).abs().max() > 1e-2
        for p, q in zip(other.parameters(), pretrained.parameters(), strict=True)
    )
    ctx = LocalContext(tmp_path / "ckpt")
    train_loop(expand(parse_study(study))[0], ctx)
    state = ctx.load_state()["model"]
    for key, value in pretrained.named_parameters():  # (BN running statistics move in training)
        torch.testing.assert_close(state[f"encoder.{key}"], value, atol=1e-6, rtol=0)
    assert bool(state["criterion.seen"].all()) and state["criterion.means"].abs().sum() > 0
