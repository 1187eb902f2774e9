"""The fixed-prototype (`fp`) classifier shared by losses without a classifier head.

Prototypes are the exact class means of the normalised embed() outputs over the un-augmented
training set (the trainer's training-set pass accumulates and all-reduces them, see
ncstudy.evaluate.passes.nc_pass), then normalised; the prediction is argmax_c p_c . z. They live
in buffers, so checkpoints keep them (every worker computes the same means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ncstudy.losses.base import unit_rows


class FixedPrototypeClassifier:
    """Mixin for an NCLoss whose classifier is the normalised class means of embed()."""

    needs_class_means = True

    def _init_prototypes(self, num_classes: int, dim: int) -> None:
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("has_prototypes", torch.zeros((), dtype=torch.bool))

    def set_class_means(self, means: Tensor) -> None:
        """Store normalised class means (K, embed_dim) as the fp prototypes."""
        if means.shape != self.prototypes.shape:
            raise ValueError(
                f"loss '{self.name}': class means must have shape {tuple(self.prototypes.shape)} "
                f"(num_classes, embed_dim), got {tuple(means.shape)}"
            )
        with torch.no_grad():
            self.prototypes.copy_(F.normalize(means.detach().float(), dim=1))
            self.has_prototypes.fill_(True)

    def _scores(self, h: Tensor) -> Tensor:
        if not bool(self.has_prototypes):
            raise RuntimeError(
                f"loss '{self.name}' predicts with fixed prototypes (fp), which are not set: call "
                "set_class_means() with the class means of the normalised embed() outputs over "
                "the training set first"
            )
        return unit_rows(self.embed(h)) @ self.prototypes.T

    def classifier_weights(self) -> Tensor | None:
        return self.prototypes.detach().clone() if bool(self.has_prototypes) else None
