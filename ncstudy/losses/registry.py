"""The loss registry: names -> (implementation, parameter model), used by the trainer, the study
validator (`check_loss_compat`), `--help` (`describe_losses`) and the docs.

Adding a loss: write its NCLoss subclass and its LossParams model, then add one line to
`_REGISTRY` below (docs/losses.md).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import BaseModel, ValidationError

from ncstudy.losses.base import LossParams, NCLoss, NormalizedClassifierParams
from ncstudy.losses.classifier import (
    CEParams,
    CrossEntropyLoss,
    FocalLoss,
    FocalParams,
    LabelSmoothingLoss,
    LabelSmoothingParams,
    MSEParams,
    RescaledMSELoss,
)
from ncstudy.losses.etf import EtfDotRegressionLoss, EtfDrParams, check_etf_dims
from ncstudy.losses.gnc import CMFLoss, CMFParams, FixedCodeLoss, FixedCodeParams
from ncstudy.losses.normalized import (
    NonlInstanceLoss,
    NONLLoss,
    NormFaceLoss,
    NTCELoss,
    NTCEParams,
    PrototypeLoss,
    PrototypeParams,
)
from ncstudy.losses.supcon import SupConLoss, SupConParams


class LossEntry(NamedTuple):
    """A registered loss: its implementation, parameter model and a one-line summary."""

    cls: type[NCLoss]
    params: type[LossParams]
    summary: str


_REGISTRY: dict[str, LossEntry] = {
    "ce": LossEntry(CrossEntropyLoss, CEParams, "cross-entropy on W h + b"),
    "ls": LossEntry(LabelSmoothingLoss, LabelSmoothingParams, "label-smoothed cross-entropy"),
    "focal": LossEntry(FocalLoss, FocalParams, "focal loss -(1-p_y)^gamma log p_y"),
    "mse": LossEntry(RescaledMSELoss, MSEParams, "rescaled MSE kappa (s_y-beta)^2 + sum s_l^2"),
    "normface": LossEntry(NormFaceLoss, NormalizedClassifierParams, "normalised softmax CE"),
    "ntce": LossEntry(NTCELoss, NTCEParams, "class weight vs. the batch, same class included"),
    "nonl": LossEntry(NONLLoss, NTCEParams, "class weight vs. other-class batch members only"),
    "nonl_instance": LossEntry(
        NonlInstanceLoss, NormalizedClassifierParams, "instance vs. other-class weights only"
    ),
    "etf_dr": LossEntry(EtfDotRegressionLoss, EtfDrParams, "fixed simplex ETF, dot-regression"),
    "prototype": LossEntry(PrototypeLoss, PrototypeParams, "Eq. 6 batch class-mean loss (fp)"),
    "supcon": LossEntry(SupConLoss, SupConParams, "supervised contrastive, V views (fp)"),
    "fixed_code": LossEntry(FixedCodeLoss, FixedCodeParams, "normalised CE, fixed softmax code W"),
    "cmf": LossEntry(CMFLoss, CMFParams, "normalised CE, W = running class-mean features"),
}


class UnknownLossError(KeyError, ValueError):
    """An unknown loss name; both a KeyError and a ValueError, its message lists valid names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def list_losses() -> list[str]:
    """Sorted names of the registered losses."""
    return sorted(_REGISTRY)


def _entry(name: str) -> LossEntry:
    if name not in _REGISTRY:
        raise UnknownLossError(f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}")
    return _REGISTRY[name]


def loss_params_model(name: str) -> type[BaseModel]:
    """The pydantic model (extra='forbid') of a loss's parameters."""
    return _entry(name).params


def predicts_with_class_means(name: str) -> bool:
    """Whether the loss classifies with class-mean prototypes set by an evaluation pass (so it
    has no running training accuracy and a validation accuracy only at evaluation epochs)."""
    return _entry(name).cls.needs_class_means


def takes_temperature(name: str) -> bool:
    """Whether the loss has a `temperature` parameter."""
    return "temperature" in loss_params_model(name).model_fields


def describe_params(name: str) -> list[tuple[str, str, Any, str]]:
    """(parameter, type, default, description) rows of a loss, for --help and the docs."""
    rows = []
    for field, info in loss_params_model(name).model_fields.items():
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
        rows.append((field, annotation.replace("typing.", ""), info.default, info.description))
    return rows


def describe_losses() -> str:
    """A plain-text table of every loss, its summary and its parameters with defaults."""
    lines = []
    for name in list_losses():
        params = ", ".join(f"{f}={d!r}" for f, _, d, _ in describe_params(name)) or "-"
        lines.append(f"{name:<14} {_entry(name).summary}  [{params}]")
    return "\n".join(lines)


def validate_loss_params(
    name: str, params: dict[str, Any] | None, *, hidden: tuple[str, ...] = ()
) -> LossParams:
    """Parse a loss's parameters; errors name the loss, the field and the valid parameters
    (`hidden` parameters are left out of that list, e.g. the temperature, set elsewhere)."""
    model = loss_params_model(name)
    try:
        return model.model_validate(params or {})
    except ValidationError as err:
        problems = "; ".join(_describe_error(e) for e in err.errors())
        valid = ", ".join(
            f"{f} (default {d!r})" for f, _, d, _ in describe_params(name) if f not in hidden
        )
        raise ValueError(
            f"loss {name!r}: {problems}. Valid parameters of {name!r}: {valid or 'none'}"
        ) from None


def _describe_error(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "(params)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown parameter"
    got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
    return f"{where}: {error['msg']}{got}"


def check_loss_compat(
    name: str, params: dict[str, Any] | None, feature_dim: int, num_classes: int
) -> LossParams:
    """Validate a loss configuration against the model before training; return parsed params."""
    parsed = validate_loss_params(name, params)
    if num_classes < 2:
        raise ValueError(f"loss {name!r} needs num_classes >= 2, got {num_classes}")
    if feature_dim < 1:
        raise ValueError(f"loss {name!r} needs model.feature_dim >= 1, got {feature_dim}")
    if name == "etf_dr" or getattr(parsed, "classifier", "learned") == "etf":
        check_etf_dims(feature_dim, num_classes, name)
    check_dims = getattr(_entry(name).cls, "check_dims", None)  # e.g. fixed_code's code rows
    if check_dims is not None:
        check_dims(parsed, feature_dim, num_classes)
    return parsed


def build_loss(
    name: str, params: dict[str, Any] | None, *, feature_dim: int, num_classes: int, seed: int = 0
) -> NCLoss:
    """Build a loss module (with its head) from its registry name and parameters."""
    parsed = check_loss_compat(name, params, feature_dim, num_classes)
    return _entry(name).cls(parsed, feature_dim=feature_dim, num_classes=num_classes, seed=seed)
