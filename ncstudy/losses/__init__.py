"""The ncstudy loss library (spec/losses.md): a registry of NCLoss modules that own their heads."""

from ncstudy.losses.base import LossOutput, LossParams, NCLoss
from ncstudy.losses.distributed import gather_batch
from ncstudy.losses.etf import simplex_etf
from ncstudy.losses.registry import (
    UnknownLossError,
    build_loss,
    check_loss_compat,
    describe_losses,
    describe_params,
    list_losses,
    loss_params_model,
    predicts_with_class_means,
    takes_temperature,
    validate_loss_params,
)

__all__ = [
    "LossOutput",
    "LossParams",
    "NCLoss",
    "UnknownLossError",
    "build_loss",
    "check_loss_compat",
    "describe_losses",
    "describe_params",
    "gather_batch",
    "list_losses",
    "loss_params_model",
    "predicts_with_class_means",
    "simplex_etf",
    "takes_temperature",
    "validate_loss_params",
]
