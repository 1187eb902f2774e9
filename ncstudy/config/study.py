"""The study (StudySpec), a resolved trial (TrialSpec), and reading a study file."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    computed_field,
    field_validator,
    model_serializer,
    model_validator,
)

from ncstudy.config.checks import (
    _check_axis,
    _check_loss_train,
    _check_loss_values,
    _check_search_metric,
    _check_ufm_study,
    check_test_at_best_val,
)
from ncstudy.config.errors import SpecError, _first_error
from ncstudy.config.evaluation import EvaluationSpec
from ncstudy.config.search_space import SearchSpec
from ncstudy.config.sections import (
    UFM_MODEL,
    DatasetSpec,
    GridSpec,
    LossSpec,
    ModelSpec,
    ResourcesSpec,
    Strict,
    TrainSpec,
    UFMSpec,
)
from ncstudy.config.yaml_load import YamlLimitError, read_study_yaml

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # the whole name: fullmatch
MAX_TRIALS = 10_000  # grid points of one study (also bounds the cross-checks' loops)
MAX_AXIS_VALUES = 1_000  # values of one grid axis


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
    ufm: UFMSpec | None = Field(None, description="the UFM problem, with model: {name: ufm}")
    search: SearchSpec | None = Field(None, description="an Optuna search instead of the grid")
    output_dir: str = "ncstudy-runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not STUDY_NAME.fullmatch(name) or name in {".", ".."} or ".." in name:
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
        # the data and loss registries import torch: only while a study is validated
        from ncstudy.data.registry import dataset_num_classes
        from ncstudy.losses import check_loss_compat

        _check_grid_size(self)
        _check_loss_train(self)
        _check_search_metric(self)
        check_test_at_best_val(self)
        if self.model.name == UFM_MODEL or self.ufm is not None:
            for path, values in self.grid.axes.items():
                _check_axis(self, path, values)
            _check_ufm_study(self)
            _check_loss_values(self)
            return self
        with_ufm = [loss.name for loss in self.losses if loss.ufm]
        if with_ufm:
            raise ValueError(f"losses ({with_ufm[0]}): `ufm:` applies to UFM studies only")
        r = self.resources
        if self.model.sync_bn and r.gpus_per_worker == 0 and r.workers_per_trial > 1:
            raise ValueError(
                "model.sync_bn: SyncBatchNorm runs on GPU workers (NCCL) only; set "
                "resources.gpus_per_worker > 0 or sync_bn: false"
            )
        batches = self.grid.batch_size + [
            b for b in (self.search.space.get("batch_size", []) if self.search else [])
        ]
        uneven = [b for b in batches if b % r.workers_per_trial]
        if uneven:
            raise ValueError(
                f"grid.batch_size: {uneven} cannot be split over resources.workers_per_trial="
                f"{r.workers_per_trial} workers; use multiples of {r.workers_per_trial}"
            )
        num_classes = dataset_num_classes(self.dataset)
        for i, loss in enumerate(self.losses):
            try:
                check_loss_compat(loss.name, loss.params, self.model.feature_dim, num_classes)
            except ValueError as err:
                raise ValueError(f"losses[{i}] ({loss.name}): {err}") from None
        for path, values in self.grid.axes.items():
            _check_axis(self, path, values)
        _check_loss_values(self)
        return self

    @property
    def study_dir(self) -> Path:
        """The study's own folder: `<output_dir>/<name>`, absolute."""
        return Path(self.output_dir).expanduser().resolve() / self.name


def _check_grid_size(study: StudySpec) -> None:
    """The grid (or the search's trial budget) is bounded: a typo such as 10**6 seeds or a
    generated axis of a million values is refused before the cross-checks iterate it."""
    grid = study.grid
    axes = {"grid.temperature": grid.temperature, "grid.batch_size": grid.batch_size}
    axes |= {"grid.seed": grid.seed} | {f"grid.axes.{p}": v for p, v in grid.axes.items()}
    for where, values in axes.items():
        if len(values) > MAX_AXIS_VALUES:
            raise ValueError(
                f"{where}: {len(values):,} values; at most {MAX_AXIS_VALUES:,} per axis"
            )
    if study.search is not None:
        n = study.search.n_trials or 0
        if n * len(study.losses) > MAX_TRIALS:
            raise ValueError(
                f"search.n_trials: {n:,} trials per loss x {len(study.losses)} losses is over "
                f"{MAX_TRIALS:,} trials; lower it"
            )
        return
    size = len(study.losses) * math.prod(len(v) for v in axes.values())
    if size > MAX_TRIALS:
        raise ValueError(
            f"grid: up to {size:,} trials (losses x temperatures x batch sizes x seeds x axes) "
            f"is over {MAX_TRIALS:,}; split the study or shorten the axes"
        )


class TrialSpec(Strict):
    """One fully resolved training run. A trial is a pure function of this (plus data)."""

    key: str
    study: str
    loss: str
    loss_params: dict[str, Any]  # what the loss receives, its temperature included
    batch_size: int
    seed: int
    lr: float
    dataset: DatasetSpec
    model: ModelSpec
    train: TrainSpec
    resources: ResourcesSpec
    evaluation: EvaluationSpec
    axes: dict[str, Any] = Field(default_factory=dict)
    ufm: UFMSpec | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def temperature(self) -> float | None:
        """The loss's temperature, read from its parameters (None for a loss without one)."""
        return self.loss_params.get("temperature")

    @model_validator(mode="before")
    @classmethod
    def _derived_temperature(cls, data: Any) -> Any:
        """A dumped trial carries `temperature`: it must agree with `loss_params`."""
        if isinstance(data, dict) and "temperature" in data:
            data = dict(data)
            temp = data.pop("temperature")
            if temp != (data.get("loss_params") or {}).get("temperature"):
                raise ValueError(
                    f"temperature: {temp} differs from loss_params.temperature; the "
                    "temperature is the loss's parameter, set it there only"
                )
        return data

    @model_serializer(mode="wrap")
    def _temperature_after_params(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Dumps list `temperature` right after `loss_params` (where the field used to be), so
        trial.yaml, the Tune configs and the MLflow params read as before."""
        out = handler(self)
        if not isinstance(out, dict) or "temperature" not in out or "loss_params" not in out:
            return out
        temp = out.pop("temperature")
        items = list(out.items())
        at = [k for k, _ in items].index("loss_params") + 1
        return dict([*items[:at], ("temperature", temp), *items[at:]])

    def config_hash(self) -> str:
        """A short, stable hash of everything that determines the trial's result."""
        # what the trial records about its machine does not change its result
        payload = self.model_dump(
            mode="json",
            exclude={"resources": True, "study": True, "evaluation": {"system_metrics"}},
        )
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study YAML (safe loader only). Raises SpecError on any problem."""
    path = Path(path)
    try:
        raw = read_study_yaml(path)
    except OSError as err:
        raise SpecError(f"cannot read study file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except YamlLimitError as err:
        raise SpecError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {str(err)[:1000]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a study file is a mapping of fields (name:, losses:, ...)")
    raw.update(overrides or {})
    return parse_study(raw, source=str(path))


def parse_study(raw: dict[str, Any], source: str = "<study>") -> StudySpec:
    """Validate a study given as a dict. Raises SpecError naming the first bad field."""
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{source}: {_first_error(err, StudySpec)}") from None
