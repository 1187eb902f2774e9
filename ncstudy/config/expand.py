"""A validated study -> its fully resolved trials, with deterministic keys."""

from __future__ import annotations

import itertools
import re
from typing import Any

from ncstudy.config.errors import SpecError
from ncstudy.config.loss_inputs import loss_axes, loss_temperatures
from ncstudy.config.sections import (
    AXIS_SECTIONS,
    DatasetSpec,
    LossSpec,
    ModelSpec,
    TrainSpec,
    UFMSpec,
)
from ncstudy.config.study import StudySpec, TrialSpec


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value))


def trial_key(
    loss: str, temperature: float | None, batch_size: int | None, seed: int, axes: dict
) -> str:
    """Deterministic, filesystem-safe key, e.g. `normface-t0.1-b512-s0` (+ `-lr0.05` ...);
    UFM trials (batch_size None: the whole set) have no `b` part, e.g. `normface-t0.1-K4-d2-s0`."""
    parts = [loss]
    if temperature is not None:
        parts.append(f"t{_fmt(temperature)}")
    if batch_size is not None:
        parts.append(f"b{batch_size}")
    for path, value in axes.items():
        leaf = path.rsplit(".", 1)[-1]
        parts.append(_fmt(value) if isinstance(value, str) else f"{_short(leaf)}{_fmt(value)}")
    parts.append(f"s{seed}")
    return "-".join(parts)


def _short(field: str) -> str:
    return "".join(w[0] for w in field.split("_")) if "_" in field else field


def expand(study: StudySpec) -> list[TrialSpec]:
    """The grid as fully resolved trials, in a deterministic order with unique keys."""
    trials: list[TrialSpec] = []
    for loss in study.losses:
        grid_axes = loss_axes(loss.name, study.grid.axes)
        for temp, batch, combo in itertools.product(
            loss_temperatures(study, loss),
            study.grid.batch_size,
            itertools.product(*grid_axes.values()),
        ):
            axes = dict(zip(grid_axes, combo, strict=True))
            for seed in study.grid.seed:
                trials.append(resolve_trial(study, loss, temp, batch, seed, axes))
    keys = [t.key for t in trials]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SpecError(f"losses: the same loss is listed twice with the same grid ({dupes[0]})")
    return trials


def resolve_trial(
    study: StudySpec,
    loss: LossSpec,
    temp: float | None,
    batch: int,
    seed: int,
    axes: dict[str, Any],
) -> TrialSpec:
    """One fully resolved trial: the study's sections with `axes` (dotted paths) applied."""
    # model: only the fields the YAML set, so a model.name axis gets that model's defaults
    sections = {
        s: getattr(study, s).model_dump(exclude_unset=s in ("ufm", "model"))
        for s in AXIS_SECTIONS
        if getattr(study, s) is not None
    }
    sections["train"].update(loss.train)  # the loss's own recipe (e.g. SupCon's lr)
    if "ufm" in sections:  # the loss's own UFM fields (a regularised ce beside normface)
        sections["ufm"].update(loss.ufm)
    params = dict(loss.params)
    for path, value in axes.items():
        section, _, field = path.partition(".")
        (params if section == "loss" else sections[section])[field] = value
    if temp is not None:  # the loss receives it; the trial's `temperature` is read from here
        params["temperature"] = temp
    train = TrainSpec.model_validate(sections["train"])
    ufm = UFMSpec.model_validate(sections["ufm"]) if "ufm" in sections else None
    # UFM: the whole sample set is the batch; lr is the line search's initial step
    key_batch = None if ufm else batch
    return TrialSpec(
        key=trial_key(loss.name, temp, key_batch, seed, axes),
        study=study.name,
        loss=loss.name,
        loss_params=params,
        batch_size=ufm.num_samples if ufm else batch,
        seed=seed,
        lr=ufm.step if ufm else train.effective_lr(batch),
        dataset=DatasetSpec.model_validate(sections["dataset"]),
        model=ModelSpec.model_validate(sections["model"]),
        train=train,
        resources=study.resources,
        evaluation=study.evaluation,
        axes=axes,
        ufm=ufm,
    )
