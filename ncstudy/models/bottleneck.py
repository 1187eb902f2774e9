"""The named feature-dimension bottlenecks (`model.bottleneck`): the layer that maps an
encoder's pooled features to `model.feature_dim` (to study K > d + 1, e.g. d = 10 on CIFAR-100).

- `linear_bn`: a linear map without bias followed by BatchNorm1d (ncstudy's default).
- `linear`: a linear map with bias and no normalisation (Jiang et al., "Generalized Neural
  Collapse for a Large Number of Classes": the encoder's last layer is a plain linear layer to d).

No ReLU after either: normalised losses need features of both signs.
"""

from __future__ import annotations

from torch import nn

BOTTLENECKS = ("linear_bn", "linear")


def make_bottleneck(kind: str, in_dim: int, feature_dim: int) -> nn.Module:
    """The `kind` bottleneck from `in_dim` pooled features to `feature_dim`."""
    if kind == "linear_bn":
        return nn.Sequential(
            nn.Linear(in_dim, feature_dim, bias=False), nn.BatchNorm1d(feature_dim)
        )
    if kind == "linear":
        return nn.Sequential(nn.Linear(in_dim, feature_dim, bias=True))
    raise ValueError(f"model.bottleneck: unknown kind {kind!r}; valid: {', '.join(BOTTLENECKS)}")
