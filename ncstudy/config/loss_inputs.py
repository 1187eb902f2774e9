"""What a loss receives from a study: its temperatures and the axes that apply to it.

The one owner of that rule: the grid (`expand`), the search (its space per loss and the trial of
a sampled point) and the study's checks all ask here. A `temperature` axis applies to the losses
that take a temperature, a `loss.<param>` axis to the losses that have that parameter, every
other axis (train., model., dataset., ufm., batch_size) to every loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ncstudy.config.sections import LossSpec
    from ncstudy.config.study import StudySpec

V = TypeVar("V")


def loss_fields(loss_name: str) -> set[str]:
    """The loss's parameter names (its temperature included, if it takes one)."""
    from ncstudy.losses import loss_params_model  # the loss registry imports torch

    return set(loss_params_model(loss_name).model_fields)


def applies(loss_name: str, path: str) -> bool:
    """Whether an axis or search dimension (`temperature`, `loss.<param>`, `train.lr`, ...)
    reaches the loss."""
    if path == "temperature":
        return "temperature" in loss_fields(loss_name)
    section, _, field = path.partition(".")
    return section != "loss" or field in loss_fields(loss_name)


def loss_axes(loss_name: str, entries: Mapping[str, V]) -> dict[str, V]:
    """The entries (dotted path -> values or range) that reach the loss, in their order."""
    return {path: v for path, v in entries.items() if applies(loss_name, path)}


def loss_temperatures(study: StudySpec, loss: LossSpec) -> list[float | None]:
    """The loss's temperatures (its own list, else the grid's), or [None] if it takes none."""
    if not applies(loss.name, "temperature"):
        return [None]
    return list(loss.temperatures or study.grid.temperature)
