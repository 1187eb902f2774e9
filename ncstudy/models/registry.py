"""The model registry: names in the study YAML map to encoder builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `fn(spec, input_shape) -> encoder` (with a `feature_dim` attribute)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _load_builtin()
    return sorted(_BUILDERS)


def build_model(spec: Any, input_shape: tuple[int, ...]) -> nn.Module:
    """Build the encoder named by `spec.name` (a ModelSpec) for inputs of `input_shape`."""
    _load_builtin()
    if spec.name not in _BUILDERS:
        raise ValueError(f"model.name: unknown model {spec.name!r}; valid: {list_models()}")
    return _BUILDERS[spec.name](spec, input_shape)


def _load_builtin() -> None:
    from ncstudy.models import resnet, small_cnn  # noqa: F401
