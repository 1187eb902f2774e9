"""The study schema: a YAML file -> a validated StudySpec -> fully resolved TrialSpecs.

Everything is checked here, before Ray or MLflow start: unknown keys (`extra="forbid"`), types,
loss names and parameters (against the loss registry), dataset and model names, grid axes,
impossible combinations, and the study name (it becomes a folder and must stay inside the
output folder).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(Strict):
    name: str = "digits"
    root: str | None = Field(None, description="where the files are (file-based datasets)")
    image_size: int | None = Field(None, ge=4)
    augment: bool = True
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    split_seed: int = 0

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ncstudy.data import list_datasets

        if name not in list_datasets():
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
        return name


class ModelSpec(Strict):
    name: str = "small_cnn"
    feature_dim: int = Field(64, ge=2)
    width: int = Field(32, ge=1)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ncstudy.models import list_models

        if name not in list_models():
            raise ValueError(f"unknown model {name!r}; valid: {', '.join(list_models())}")
        return name


class TrainSpec(Strict):
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.1, gt=0, description="base learning rate, at base_batch_size")
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    base_batch_size: int = Field(256, ge=1)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of lr")
    amp: bool = False

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSpec:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        return self

    def effective_lr(self, batch_size: int) -> float:
        """The learning rate after the batch-size scaling rule."""
        ratio = batch_size / self.base_batch_size
        factor = {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[self.lr_scaling]
        return self.lr * factor


class LossSpec(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    temperatures: list[float] | None = Field(
        None, description="this loss's temperatures, replacing grid.temperature"
    )

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
        from ncstudy.losses import list_losses, loss_params_model, takes_temperature

        if self.name not in list_losses():
            raise ValueError(f"unknown loss {self.name!r}; valid: {', '.join(list_losses())}")
        if "temperature" in self.params:
            raise ValueError(
                "params.temperature: temperatures come from grid.temperature (or this loss's "
                "`temperatures:` list), not from params"
            )
        model = loss_params_model(self.name)
        probe = dict(self.params)
        if takes_temperature(self.name):
            probe["temperature"] = 1.0
        try:
            model.model_validate(probe)
        except ValidationError as err:
            raise ValueError(f"params of loss {self.name!r}: {_first_error(err)}") from None
        if self.temperatures is not None:
            if not takes_temperature(self.name):
                raise ValueError(f"loss {self.name!r} has no temperature; remove `temperatures`")
            _check_temperatures(self.temperatures)
        return self


class GridSpec(Strict):
    temperature: list[float] = Field(default_factory=lambda: [0.1])
    batch_size: list[int] = Field(default_factory=lambda: [128])
    seed: list[int] = Field(default_factory=lambda: [0])
    axes: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="any other axis, by dotted path into the trial: train.lr, loss.queue_size, ...",
    )

    @field_validator("temperature")
    @classmethod
    def _temps(cls, values: list[float]) -> list[float]:
        return _check_temperatures(values)

    @field_validator("batch_size", "seed")
    @classmethod
    def _non_empty(cls, values: list[int]) -> list[int]:
        if not values:
            raise ValueError("the grid axis is empty; give at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"repeated values in {values}")
        return values

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"batch sizes must be >= 1, got {values}")
        return values


class ResourcesSpec(Strict):
    workers_per_trial: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(1, ge=0, description="Ray Train retries of a trial's workers")
    trial_max_failures: int = Field(1, ge=0, description="Ray Tune retries of a whole trial")
    single_worker_fastpath: bool = Field(
        True, description="run 1-worker trials in the Tune process (same loop, no Train start-up)"
    )


class EvaluationSpec(Strict):
    every: int = Field(1, ge=1, description="epochs between evaluations (and checkpoints)")
    nc_metrics: bool = True
    nc_on_test: bool = False
    max_intra_classes: int = Field(100, ge=1)
    eval_batch_size: int = Field(512, ge=1)


class StudySpec(Strict):
    name: str
    description: str = ""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    losses: list[LossSpec]
    grid: GridSpec = Field(default_factory=GridSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output_dir: str = "ncstudy-runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not STUDY_NAME.match(name) or name in {".", ".."} or ".." in name:
            raise ValueError(
                f"{name!r} is not a safe study name: use 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (it becomes a folder inside output_dir)"
            )
        return name

    @field_validator("losses")
    @classmethod
    def _losses(cls, losses: list[LossSpec]) -> list[LossSpec]:
        if not losses:
            raise ValueError("the study lists no loss; add at least one, e.g. [{name: ce}]")
        return losses

    @model_validator(mode="after")
    def _cross_checks(self) -> StudySpec:
        from ncstudy.data.registry import dataset_num_classes
        from ncstudy.losses import check_loss_compat

        num_classes = dataset_num_classes(self.dataset)
        for i, loss in enumerate(self.losses):
            try:
                check_loss_compat(loss.name, loss.params, self.model.feature_dim, num_classes)
            except ValueError as err:
                raise ValueError(f"losses[{i}] ({loss.name}): {err}") from None
        for path, values in self.grid.axes.items():
            _check_axis(self, path, values)
        return self

    @property
    def study_dir(self) -> Path:
        """The study's own folder: `<output_dir>/<name>`, absolute."""
        return Path(self.output_dir).expanduser().resolve() / self.name


class TrialSpec(Strict):
    """One fully resolved training run. A trial is a pure function of this (plus data)."""

    key: str
    study: str
    loss: str
    loss_params: dict[str, Any]
    temperature: float | None
    batch_size: int
    seed: int
    lr: float
    dataset: DatasetSpec
    model: ModelSpec
    train: TrainSpec
    resources: ResourcesSpec
    evaluation: EvaluationSpec
    axes: dict[str, Any] = Field(default_factory=dict)

    def config_hash(self) -> str:
        """A short, stable hash of everything that determines the trial's result."""
        payload = self.model_dump(mode="json", exclude={"resources", "study"})
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class SpecError(ValueError):
    """A study file that cannot run; the message names the field and the fix."""


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study YAML (safe loader only). Raises SpecError on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError(f"cannot read study file {path}: {err.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a study file is a mapping of fields (name:, losses:, ...)")
    raw.update(overrides or {})
    return parse_study(raw, source=str(path))


def parse_study(raw: dict[str, Any], source: str = "<study>") -> StudySpec:
    """Validate a study given as a dict. Raises SpecError naming the first bad field."""
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {_first_error(err)}") from None


def _first_error(err: ValidationError) -> str:
    """Format pydantic errors as 'field.path: message' lines."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against the documented fields"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def _check_temperatures(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("the temperature list is empty; give at least one value")
    bad = [v for v in values if not v > 0]
    if bad:
        raise ValueError(f"temperatures must be > 0 (logits are cos/tau), got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated temperatures in {values}")
    return values


_AXIS_SECTIONS = {"train": TrainSpec, "model": ModelSpec, "dataset": DatasetSpec}


def _check_axis(study: StudySpec, path: str, values: list[Any]) -> None:
    """An extra grid axis must name an existing field and every value must validate."""
    where = f"grid.axes.{path}"
    if not values:
        raise ValueError(f"{where}: the axis is empty; give at least one value")
    section, _, field = path.partition(".")
    if section == "loss":
        from ncstudy.losses import loss_params_model

        takers = [s.name for s in study.losses if field in loss_params_model(s.name).model_fields]
        if not field or field == "temperature" or not takers:
            raise ValueError(f"{where}: no loss of this study has a parameter {field!r}")
        return
    if section not in _AXIS_SECTIONS or field not in _AXIS_SECTIONS[section].model_fields:
        raise ValueError(
            f"{where}: unknown axis; use train.<field>, model.<field>, dataset.<field> or "
            "loss.<param> (temperature, batch_size and seed have their own grid lists)"
        )
    base = getattr(study, section).model_dump()
    for v in values:
        try:
            _AXIS_SECTIONS[section].model_validate({**base, field: v})
        except ValidationError as err:
            raise ValueError(f"{where}={v!r}: {_first_error(err)}") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return format(value, "g")
    return re.sub(r"[^A-Za-z0-9.]+", "_", str(value))


def trial_key(loss: str, temperature: float | None, batch_size: int, seed: int, axes: dict) -> str:
    """Deterministic, filesystem-safe key, e.g. `normface-t0.1-b512-s0` (+ `-lr0.05` ...)."""
    parts = [loss]
    if temperature is not None:
        parts.append(f"t{_fmt(temperature)}")
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
    from ncstudy.losses import loss_params_model, takes_temperature

    for loss in study.losses:
        temps: list[float | None] = (
            (loss.temperatures or study.grid.temperature)
            if takes_temperature(loss.name)
            else [None]
        )
        # loss.<param> axes apply only to the losses that have that parameter
        fields = loss_params_model(loss.name).model_fields
        grid_axes = {
            p: v
            for p, v in study.grid.axes.items()
            if not p.startswith("loss.") or p.partition(".")[2] in fields
        }
        for temp, batch, combo in itertools.product(
            temps, study.grid.batch_size, itertools.product(*grid_axes.values())
        ):
            axes = dict(zip(grid_axes, combo, strict=True))
            sections = {s: getattr(study, s).model_dump() for s in _AXIS_SECTIONS}
            params = dict(loss.params)
            for path, value in axes.items():
                section, _, field = path.partition(".")
                (params if section == "loss" else sections[section])[field] = value
            if temp is not None:
                params["temperature"] = temp
            train = TrainSpec.model_validate(sections["train"])
            for seed in study.grid.seed:
                trials.append(
                    TrialSpec(
                        key=trial_key(loss.name, temp, batch, seed, axes),
                        study=study.name,
                        loss=loss.name,
                        loss_params=params,
                        temperature=temp,
                        batch_size=batch,
                        seed=seed,
                        lr=train.effective_lr(batch),
                        dataset=DatasetSpec.model_validate(sections["dataset"]),
                        model=ModelSpec.model_validate(sections["model"]),
                        train=train,
                        resources=study.resources,
                        evaluation=study.evaluation,
                        axes=axes,
                    )
                )
    keys = [t.key for t in trials]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SpecError(f"losses: the same loss is listed twice with the same grid ({dupes[0]})")
    return trials
