"""The spherical UFM (Yaras et al. 2022): features and class weights on the unit sphere, no bias,
no weight decay; Riemannian L-BFGS (tangent projection, normalisation retraction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ncstudy.losses import NCLoss
from ncstudy.ufm.problem import UFMProblem

# Losses with a sphere geometry: normalised classifiers and the contrastive class-to-instance
# and prototype losses (whole sample set as one batch).
SPHERICAL_LOSSES = ("normface", "ntce", "nonl", "nonl_instance", "prototype", "supcon")
# Losses whose value is positive (the positive term is in the denominator): log_loss is safe.
POSITIVE_LOSSES = ("normface", "ntce")


def tangent(x: Tensor, g: Tensor) -> Tensor:
    """Project g onto the tangent space of the sphere at each row of x: g - <g, x> x (g may
    carry leading batch dimensions)."""
    return g - (g * x).sum(dim=-1, keepdim=True) * x


class SphericalUFM(UFMProblem):
    """Spherical UFM; the feature block of the step is scaled by N/K (the feature gradient is
    O(1/N), the weight gradient O(1/K))."""

    def __init__(self, criterion: NCLoss, labels: Tensor, dim: int, **kwargs: object) -> None:
        if criterion.name not in SPHERICAL_LOSSES:
            raise ValueError(
                f"the spherical UFM needs a normalised loss ({', '.join(SPHERICAL_LOSSES)}), "
                f"got {criterion.name!r}; use ufm.variant: regularized for it"
            )
        super().__init__(criterion, labels, dim, **kwargs)  # type: ignore[arg-type]
        self.features = F.normalize(self.features, dim=1)
        for p in self.params:
            if p.dim() != 2:
                raise ValueError(f"loss {criterion.name!r}: expected (K, d) class weights")
            with torch.no_grad():
                p.copy_(F.normalize(p, dim=1))
        num_classes = int(labels.max()) + 1
        self.feature_scale = len(labels) / num_classes

    def _project(self, x: Tensor, v: Tensor) -> Tensor:
        return tangent(x, v)

    def _retract(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)

    def weights(self) -> Tensor | None:
        """The unit class weights (None for losses without learned weights, e.g. prototype)."""
        w = self.criterion.classifier_weights()
        return None if w is None else F.normalize(w, dim=1)
