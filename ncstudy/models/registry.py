"""The model registry: names in the study YAML map to encoder builders, each with its standard
width and default feature dimension (so `model: {name: resnet50}` is the paper's ResNet-50).

The model modules register themselves when `ncstudy.models` imports them (the package is
always imported before this module), so the registry never imports them back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# name -> (standard width, default feature_dim as a function of the width)
_DEFAULTS: dict[str, tuple[int, Callable[[int], int]]] = {}


def register_model(
    name: str, width: int, feature_dim: Callable[[int], int]
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `fn(spec, input_shape) -> encoder` (with a `feature_dim` attribute),
    with the model's standard `width` and its default `feature_dim(width)`."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        _DEFAULTS[name] = (width, feature_dim)
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def model_dims(name: str, width: int | None, feature_dim: int | None) -> tuple[int, int]:
    """(width, feature_dim) of model `name`: the given values, else the model's defaults (the
    standard width; the feature dimension the model has without a bottleneck)."""
    if name not in _DEFAULTS:
        raise ValueError(f"model.name: unknown model {name!r}; valid: {list_models()}")
    standard_width, default_dim = _DEFAULTS[name]
    width = standard_width if width is None else width
    return width, default_dim(width) if feature_dim is None else feature_dim


def build_model(spec: Any, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the encoder named by `spec.name` (a validated ModelSpec, so width and feature_dim
    are filled in) for inputs of `input_shape`."""
    if spec.name not in _BUILDERS:
        raise ValueError(f"model.name: unknown model {spec.name!r}; valid: {list_models()}")
    return _BUILDERS[spec.name](spec, input_shape)
