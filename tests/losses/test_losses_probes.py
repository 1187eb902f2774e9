"""The classifiers of SCL trials: lp / nlp probes on frozen features and fp prototypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ncstudy.evaluate import probe_accuracy, train_linear_probe
from ncstudy.evaluate.passes import nc_pass, shard_loader
from ncstudy.losses import build_loss

K, D = 4, 8


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs around orthogonal directions (margin >> noise), so linearly separable."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    centres = 4.0 * torch.eye(K, D)
    return centres[labels] + 0.3 * torch.randn(n, D, generator=gen), labels


@pytest.mark.parametrize("normalized", [False, True])
def test_probes_separate_separable_features(normalized: bool) -> None:
    train_x, train_y = separable(200, seed=0)
    test_x, test_y = separable(100, seed=1)
    probe = train_linear_probe(
        train_x, train_y, K, normalized=normalized, epochs=10, lr=0.05, batch_size=32, seed=0
    )
    assert probe_accuracy(probe, train_x, train_y) == 1.0
    assert probe_accuracy(probe, test_x, test_y) >= 0.99
    again = train_linear_probe(
        train_x, train_y, K, normalized=normalized, epochs=10, lr=0.05, batch_size=32, seed=0
    )
    for a, b in zip(probe.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)  # deterministic given the seed


def test_probe_kinds() -> None:
    x, y = separable(40, seed=2)
    lp = train_linear_probe(x, y, K, normalized=False, epochs=1, lr=0.1, batch_size=8, seed=0)
    nlp = train_linear_probe(x, y, K, normalized=True, epochs=1, lr=0.1, batch_size=8, seed=0)
    assert lp.bias is not None and not hasattr(nlp, "bias")
    # nlp only sees directions: rescaling the features changes nothing
    torch.testing.assert_close(nlp(x * 7.0), nlp(x))
    with pytest.raises(ValueError, match="epochs"):
        train_linear_probe(x, y, K, normalized=False, epochs=0, lr=0.1, batch_size=8, seed=0)


def test_fixed_prototypes_give_nearest_class_mean_accuracy() -> None:
    train_x, train_y = separable(200, seed=0)
    test_x, test_y = separable(100, seed=3)
    test_x = test_x + 2.0 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(4))
    loss = build_loss("supcon", {"projection_dim": 6}, feature_dim=D, num_classes=K, seed=1)
    # the trainer's path: its training-set metrics pass sets the prototypes
    loader = shard_loader(TensorDataset(train_x, train_y), 0, 1, batch_size=64)
    nc_pass(nn.Identity(), loss, loader, K, torch.device("cpu"), K, set_prototypes=True)
    with torch.no_grad():
        fp_accuracy = probe_accuracy(loss.scores, test_x, test_y)
        # independently, in numpy: cosine to the normalised means of the normalised projections
        z_train = loss.embed(train_x).numpy().astype(np.float64)
        z_test = loss.embed(test_x).numpy().astype(np.float64)
    z_train /= np.linalg.norm(z_train, axis=1, keepdims=True)
    z_test /= np.linalg.norm(z_test, axis=1, keepdims=True)
    means = np.stack([z_train[train_y.numpy() == c].mean(0) for c in range(K)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    ncm_accuracy = float(((z_test @ means.T).argmax(1) == test_y.numpy()).mean())
    assert 0.3 < ncm_accuracy < 1.0  # noisy enough that agreement is not trivial
    assert fp_accuracy == pytest.approx(ncm_accuracy, abs=1e-12)
    np.testing.assert_allclose(loss.classifier_weights().numpy(), means, atol=1e-6)


def test_probe_step_decay_applies_after_each_milestone() -> None:
    """The lr multiplies by lr_decay after each milestone epoch: with a vanishing factor after
    epoch 1, three epochs end where one epoch ends (same seed, same first-epoch order)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=gen)
    y = torch.arange(60) % 3
    common = dict(normalized=False, lr=0.5, batch_size=16, seed=3)
    one = train_linear_probe(x, y, 3, epochs=1, **common)
    frozen = train_linear_probe(x, y, 3, epochs=3, milestones=(1,), lr_decay=1e-12, **common)
    free = train_linear_probe(x, y, 3, epochs=3, **common)
    for a, b, c in zip(one.parameters(), frozen.parameters(), free.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)
        assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    "probes, field",
    [({"milestones": [60, 50]}, "milestones"), ({"epochs": 90, "milestones": [90]}, "milestones")],
)
def test_probe_milestones_are_validated(probes: dict, field: str) -> None:
    from pydantic import ValidationError

    from ncstudy.config import ProbeSpec

    with pytest.raises(ValidationError, match=field):
        ProbeSpec(**probes)
