"""The classifiers of SCL trials: lp / nlp probes on frozen features and fp prototypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ncstudy.evaluate import ClassMeanAccumulator, probe_accuracy, train_linear_probe
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
    with torch.no_grad():
        acc = ClassMeanAccumulator(K, 6)
        for part in torch.arange(200).split(64):
            acc.update(loss.embed(train_x[part]), train_y[part])
        loss.set_class_means(acc.means())
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
