"""Encoders by name. Every encoder maps images to a `feature_dim`-dimensional representation;
classifier heads belong to the losses (ncstudy.losses), never to the encoder."""

from ncstudy.models import resnet, small_cnn, wide_resnet  # noqa: F401  (importing registers them)
from ncstudy.models.registry import build_model, list_models, model_dims

__all__ = ["build_model", "list_models", "model_dims"]
