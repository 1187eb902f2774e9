"""The sections of a study file (dataset, model, train, a loss entry, grid, resources, ufm)
and the field-level checks they share."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ncstudy.cluster import check_custom_resources
from ncstudy.config.errors import error_message
from ncstudy.data import list_datasets
from ncstudy.data.variants import check_data_variants

UFM_MODEL = "ufm"  # model.name of unconstrained-feature-model trials (no encoder, no dataset)

# Upper bounds: far above any real study, low enough that a typo (`epochs: 1.0e+12`, a batch
# of 10**9) is refused with a message instead of running until killed or exhausting memory.
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536  # the largest published large-batch recipes (LARS, LAMB) use 32-64k
MAX_WORKERS = 1_024  # Ray Train workers of one trial
MAX_LOADER_WORKERS = 64  # DataLoader processes per worker
MAX_RETRIES = 100
MAX_SEED = 2**32 - 1  # numpy's default_rng and torch.manual_seed both take 0..2**32-1
MAX_IMAGE_SIZE = 1_024
MAX_WIDTH = 4_096
MAX_FEATURE_DIM = 65_536

# Every float of every section is finite (YAML's .inf / .nan are refused: config-wide, so
# a new field is covered without its own check); a field that should accept infinity says so.
FINITE = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
BatchSize = Annotated[int, Field(ge=1, le=MAX_BATCH)]
Epochs = Annotated[int, Field(ge=1, le=MAX_EPOCHS)]


class Strict(BaseModel):
    model_config = FINITE


class DatasetSpec(Strict):
    name: str = "digits"
    root: str | None = Field(None, description="where the files are (file-based datasets)")
    image_size: int | None = Field(None, ge=4, le=MAX_IMAGE_SIZE)
    augment: bool = True
    crop: Literal["resized", "padded"] = Field(
        "resized",
        description="training crop of image datasets: RandomResizedCrop (scale 0.2-1), or a "
        "random crop of the image zero-padded by 1/8 of its side (CIFAR's 4 px) + flip",
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5)
    split_seed: Seed = 0
    download: bool = Field(False, description="torchvision download (CIFAR) when root is empty")
    subset_per_class: int | None = Field(
        None, ge=1, description="use a seeded subset of this many training images per class"
    )
    test_per_class: int | None = Field(None, ge=1, description="cap the test set per class")
    imbalance_ratio: float | None = Field(
        None, gt=0, le=1, description="long-tailed profile n_min / n_max (0.01: factor 100)"
    )
    random_labels: bool = Field(
        False, description="train on a seeded permutation of the training labels (label_seed)"
    )
    label_seed: Seed = Field(0, description="seed of the random_labels permutation")
    classes: list[int | str] | None = Field(
        None, description="only these classes (indices or names), relabelled 0..k-1 in this order"
    )
    normalization: Literal["dataset", "imagenet"] = Field(
        "dataset",
        description="the per-channel statistics images are normalised with: the dataset's own, "
        "or ImageNet's (an encoder started from ImageNet weights, model.init_from: torchvision:)",
    )
    loader: Literal["torchvision", "ffcv"] = "torchvision"
    beton_dir: str | None = Field(None, description="folder of the FFCV .beton files")
    num_workers: int = Field(
        0, ge=0, le=MAX_LOADER_WORKERS, description="loader worker processes (0: in-process)"
    )

    @model_validator(mode="after")
    def _data_options(self) -> DatasetSpec:
        if self.name.endswith("_lt") and self.imbalance_ratio is None:
            raise ValueError(f"imbalance_ratio: {self.name} needs one (n_min / n_max, e.g. 0.01)")
        check_data_variants(self)
        if self.loader == "ffcv":
            # the YAML's own mistakes first, so they are reported with or without the extra
            if self.name == "digits":
                raise ValueError("loader: ffcv serves image datasets; use torchvision")
            if self.name == "miniimagenet":
                raise ValueError("loader: ffcv has no miniimagenet files; use torchvision")
            if self.crop == "padded":
                raise ValueError(
                    "crop: padded runs on the torchvision loader; use loader: torchvision"
                )
            if self.beton_dir is None:
                raise ValueError(
                    "beton_dir: loader: ffcv needs the folder of the .beton files "
                    "(write them with `python -m data_prep.write_beton`)"
                )
            # imports torch and torchvision: only for loader: ffcv
            from ncstudy.data.ffcv_loader import require_ffcv

            require_ffcv(import_it=False)  # importing FFCV (numba) costs seconds
        if self.classes is not None:
            # the class-subset module imports torch: only for studies that set classes
            from ncstudy.data.class_subset import check_classes

            check_classes(self)
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in list_datasets():
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
        return name


class ModelSpec(Strict):
    name: str = "small_cnn"
    feature_dim: int | None = Field(
        None,
        ge=2,
        le=MAX_FEATURE_DIM,
        description="encoder output size; default: the pooled width (no bottleneck)",
    )
    width: int | None = Field(
        None,
        ge=1,
        le=MAX_WIDTH,
        description="first-stage channels; default: the model's standard (ResNets 64)",
    )
    sync_bn: bool = Field(False, description="SyncBatchNorm across GPU workers (DDP on CUDA)")
    bottleneck: Literal["linear_bn", "linear"] = Field(
        "linear_bn",
        description="the layer to feature_dim: linear (no bias) + BN, or linear with bias "
        "(Jiang et al.); ncstudy/models/bottleneck.py",
    )
    init_from: str | None = Field(
        None,
        description="initialise the encoder (fine-tuning): a state_dict file, runs:/<run_id> "
        "(a finished trial's MLflow model/ in this study's tracking store), or "
        "torchvision:<WeightsEnum> (e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2)",
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        # the model registry imports torch: only while a study is validated
        from ncstudy.models import list_models

        if name != UFM_MODEL and name not in list_models():
            valid = ", ".join([*list_models(), UFM_MODEL])
            raise ValueError(f"unknown model {name!r}; valid: {valid}")
        return name

    @model_validator(mode="after")
    def _model_defaults(self) -> ModelSpec:
        # Per-model defaults (resnet50: width 64, feature_dim 2048), filled in but not marked as
        # set, so a `model.name` grid axis re-derives them for each model.
        if self.name != UFM_MODEL:
            from ncstudy.models import model_dims  # the model registry imports torch

            width, feature_dim = model_dims(self.name, self.width, self.feature_dim)
            self.__dict__.update(width=width, feature_dim=feature_dim)
        return self


class TrainSpec(Strict):
    epochs: Epochs = 10
    lr: float = Field(0.1, gt=0, description="base learning rate, at base_batch_size")
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"
    base_batch_size: BatchSize = 256
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    feature_decay: float = Field(
        0.0,
        ge=0,
        description="penalty feature_decay/2 * mean ||h||^2 on the encoder's features (the "
        "regularised UFM's lambda_H, per sample; ncstudy/losses/feature_penalty.py)",
    )
    warmup_epochs: float = Field(0.0, ge=0, le=MAX_EPOCHS)
    warmup_start_factor: float = Field(0.1, gt=0, le=1)
    min_lr_factor: float = Field(0.0, ge=0, le=1, description="cosine floor, as a fraction of lr")
    amp: bool = False
    # The paper-004 recipe (ncstudy/recipe.py): multi-step decay by fractions of training, and
    # gradient-norm clipping.
    lr_schedule: Literal["cosine", "multistep"] = Field(
        "cosine", description="after the warmup: cosine decay, or x lr_gamma at each milestone"
    )
    lr_milestones: list[float] = Field(
        default_factory=list,
        description="multistep: fractions of the training steps, increasing, in (0, 1)",
    )
    lr_gamma: float = Field(0.1, gt=0, le=1, description="multistep: lr factor per milestone")
    grad_clip_norm: float | None = Field(
        None, gt=0, description="clip the global gradient norm to this (None: no clipping)"
    )

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSpec:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})"
            )
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov: true needs momentum > 0")
        check_lr_schedule(self.lr_schedule, self.lr_milestones)
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
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="this loss's `train:` fields, merged over the study's (e.g. SupCon's lr)",
    )
    ufm: dict[str, Any] = Field(
        default_factory=dict,
        description="this loss's `ufm:` fields, merged over the study's (UFM studies: e.g. "
        "`{variant: regularized, lambda_h: 0.005}` for ce beside a spherical normface)",
    )

    @field_validator("train")
    @classmethod
    def _train_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _check_train_override(values)

    @field_validator("ufm")
    @classmethod
    def _ufm_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        unknown = [k for k in values if k not in UFMSpec.model_fields]
        if unknown:
            valid = ", ".join(UFMSpec.model_fields)
            raise ValueError(f"{unknown[0]}: unknown field; valid: {valid} (as in `ufm:`)")
        return values

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
        # the loss registry imports torch: only while a study is validated
        from ncstudy.losses import list_losses, takes_temperature, validate_loss_params

        if self.name not in list_losses():
            raise ValueError(f"unknown loss {self.name!r}; valid: {', '.join(list_losses())}")
        if "temperature" in self.params:
            raise ValueError(
                "params.temperature: temperatures come from grid.temperature (or this loss's "
                "`temperatures:` list), not from params"
            )
        probe = dict(self.params)
        if takes_temperature(self.name):
            probe["temperature"] = 1.0
        try:  # the registry's message names the field and lists the valid parameters
            validate_loss_params(self.name, probe, hidden=("temperature",))
        except ValueError as err:
            raise ValueError(f"params: {err}") from None
        if self.temperatures is not None:
            if not takes_temperature(self.name):
                raise ValueError(f"loss {self.name!r} has no temperature; remove `temperatures`")
            _check_temperatures(self.temperatures)
        return self


class GridSpec(Strict):
    temperature: list[float] = Field(default_factory=lambda: [0.1])
    batch_size: list[BatchSize] = Field(default_factory=lambda: [128])
    seed: list[Seed] = Field(default_factory=lambda: [0])
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
    workers_per_trial: int = Field(1, ge=1, le=MAX_WORKERS)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    max_concurrent_trials: int | None = Field(None, ge=1, le=100_000)
    max_failures: int = Field(
        1, ge=0, le=MAX_RETRIES, description="Ray Train retries of a trial's workers"
    )
    trial_max_failures: int = Field(
        1, ge=0, le=MAX_RETRIES, description="Ray Tune retries of a whole trial"
    )
    checkpoints_to_keep: int = Field(
        2,
        ge=1,
        le=100,
        description="checkpoints kept per trial, the newest ones (Ray Tune and Ray Train alike)",
    )
    single_worker_fastpath: bool = Field(
        True, description="run 1-worker trials in the Tune process (same loop, no Train start-up)"
    )
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per worker, {name: amount} (e.g. an accelerator type "
        "of a cluster's worker group); trials wait for nodes that have them",
    )

    @field_validator("custom", mode="before")  # before pydantic turns true / "1" into 1.0
    @classmethod
    def _custom_amounts(cls, value: Any) -> dict[str, float]:
        return check_custom_resources(value)


class UFMSpec(Strict):
    """An unconstrained-feature-model problem (spec/ufm.md): free features, one per sample."""

    K: int = Field(4, ge=2, le=10_000, description="number of classes")
    d: int = Field(8, ge=2, le=MAX_FEATURE_DIM, description="feature dimension")
    n_per_class: int = Field(5, ge=1, le=100_000, description="free features (samples) per class")
    variant: Literal["spherical", "regularized"] = Field(
        "spherical", description="unit-sphere features and weights, or weight-decayed ones"
    )
    iterations: int = Field(
        500, ge=1, le=10_000_000, description="gradient steps (Armijo backtracking)"
    )
    step: float = Field(1.0, gt=0, description="initial step size of the line search")
    memory: int = Field(
        10,
        ge=0,
        le=1_000,
        description="L-BFGS curvature pairs; 0 is plain (Riemannian) gradient descent as in "
        "Yaras et al., which creeps at sharp temperatures (ncstudy/ufm/problem.py)",
    )
    log_loss: bool = Field(
        False, description="minimise log(loss): needed for sharp temperatures (1/tau >= 40)"
    )
    lambda_w: float = Field(5e-2, ge=0, description="weight decay on W (regularized)")
    lambda_h: float = Field(1e-2, ge=0, description="weight decay on the features (regularized)")
    lambda_b: float = Field(1e-2, ge=0, description="weight decay on the bias (regularized)")
    init_scale: float = Field(0.1, gt=0, description="initial feature norm scale (regularized)")

    @model_validator(mode="after")
    def _variant_fields(self) -> UFMSpec:
        # checked by value, not by "set", so a dumped-and-reloaded spec stays valid
        fields = type(self).model_fields
        changed = [
            f
            for f in ("lambda_w", "lambda_h", "lambda_b", "init_scale")
            if getattr(self, f) != fields[f].default
        ]
        if self.variant == "spherical" and changed:
            field = changed[0]
            raise ValueError(
                f"{field} applies to variant: regularized only; remove it or set the variant"
            )
        if self.variant == "regularized" and self.log_loss:
            raise ValueError("log_loss applies to variant: spherical only; remove it")
        return self

    @property
    def num_samples(self) -> int:
        """N = K n: the whole sample set, which is also the (single) batch."""
        return self.K * self.n_per_class


def check_lr_schedule(schedule: str, milestones: list[float]) -> None:
    """lr_milestones: only for multistep, where at least one is needed, each a fraction of
    training in (0, 1), strictly increasing."""
    if schedule != "multistep":
        if milestones:
            raise ValueError("lr_milestones applies to lr_schedule: multistep only; remove it")
        return
    if not milestones:
        raise ValueError(
            "lr_milestones: multistep needs fractions of training, e.g. [0.4286, 0.7143]"
        )
    if any(not 0 < m < 1 for m in milestones):
        raise ValueError(f"lr_milestones: fractions of training in (0, 1), got {milestones}")
    if any(b <= a for a, b in zip(milestones, milestones[1:], strict=False)):
        raise ValueError(f"lr_milestones: must be strictly increasing, got {milestones}")


def _check_temperatures(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("the temperature list is empty; give at least one value")
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"temperatures must be finite and > 0 (logits are cos/tau), got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated temperatures in {values}")
    return values


def _check_train_override(values: dict[str, Any]) -> dict[str, Any]:
    """A loss's `train:` override: known TrainSpec fields (extra="forbid"), each value valid on
    its own; the merged recipe is checked by `_check_loss_train`."""
    fields = TrainSpec.model_fields
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{key}: unknown field; valid: {', '.join(fields)} (as in `train:`)")
        field = fields[key]
        try:
            adapter = TypeAdapter(Annotated[field.annotation, field], config=FINITE)
            out[key] = adapter.validate_python(value)
        except ValidationError as err:
            raise ValueError(f"{key}: {error_message(err.errors()[0])}") from None
    return out


AXIS_SECTIONS: dict[str, type[Strict]] = {
    "train": TrainSpec,
    "model": ModelSpec,
    "dataset": DatasetSpec,
    "ufm": UFMSpec,
}
