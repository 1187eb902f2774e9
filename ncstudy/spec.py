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
import math
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
UFM_MODEL = "ufm"  # model.name of unconstrained-feature-model trials (no encoder, no dataset)


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
    download: bool = Field(False, description="torchvision download (CIFAR) when root is empty")
    subset_per_class: int | None = Field(
        None, ge=1, description="use a seeded subset of this many training images per class"
    )
    test_per_class: int | None = Field(None, ge=1, description="cap the test set per class")
    imbalance_ratio: float | None = Field(
        None, gt=0, le=1, description="long-tailed profile n_min / n_max (0.01: factor 100)"
    )
    loader: Literal["torchvision", "ffcv"] = "torchvision"
    beton_dir: str | None = Field(None, description="folder of the FFCV .beton files")
    num_workers: int = Field(0, ge=0, description="loader worker processes (0: in-process)")

    @model_validator(mode="after")
    def _data_options(self) -> DatasetSpec:
        if self.name.endswith("_lt") and self.imbalance_ratio is None:
            raise ValueError(f"imbalance_ratio: {self.name} needs one (n_min / n_max, e.g. 0.01)")
        if self.loader == "ffcv":
            # the YAML's own mistakes first, so they are reported with or without the extra
            if self.name == "digits":
                raise ValueError("loader: ffcv serves image datasets; use torchvision")
            if self.beton_dir is None:
                raise ValueError(
                    "beton_dir: loader: ffcv needs the folder of the .beton files "
                    "(write them with `python -m data_prep.write_beton`)"
                )
            from ncstudy.data.ffcv_loader import require_ffcv

            require_ffcv(import_it=False)  # importing FFCV (numba) costs seconds
        return self

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from ncstudy.data import list_datasets

        if name not in list_datasets():
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
        return name


class ModelSpec(Strict):
    name: str = "small_cnn"
    feature_dim: int | None = Field(
        None, ge=2, description="encoder output size; default: the pooled width (no bottleneck)"
    )
    width: int | None = Field(
        None, ge=1, description="first-stage channels; default: the model's standard (ResNets 64)"
    )
    sync_bn: bool = Field(False, description="SyncBatchNorm across GPU workers (DDP on CUDA)")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
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
            from ncstudy.models import model_dims

            width, feature_dim = model_dims(self.name, self.width, self.feature_dim)
            self.__dict__.update(width=width, feature_dim=feature_dim)
        return self


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
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="this loss's `train:` fields, merged over the study's (e.g. SupCon's lr)",
    )

    @field_validator("train")
    @classmethod
    def _train_fields(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _check_train_override(values)

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
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


class ProbeSpec(Strict):
    """Linear probes on the frozen encoder of SCL trials (lp: linear + CE; nlp: NormFace)."""

    enabled: bool = True
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.5, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.1, gt=0, description="nlp's NormFace temperature")
    batch_size: int = Field(256, ge=1)
    milestones: list[int] = Field(
        default_factory=list, description="epochs after which the lr is multiplied by lr_decay"
    )
    lr_decay: float = Field(0.2, gt=0, le=1, description="step-decay factor at each milestone")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, values: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(values, values[1:], strict=False)) or any(
            v < 1 for v in values
        ):
            raise ValueError(f"must be increasing epochs >= 1, e.g. [60, 75, 90]; got {values}")
        return values

    @model_validator(mode="after")
    def _milestones_fit(self) -> ProbeSpec:
        if self.milestones and self.milestones[-1] >= self.epochs:
            raise ValueError(
                f"milestones: {self.milestones[-1]} is not before the last epoch "
                f"({self.epochs}); drop it or raise probes.epochs"
            )
        return self


DOWNSTREAM_DATASETS = (
    "food101", "cifar10", "cifar100", "stanford_cars", "dtd", "oxford_pets", "flowers102",
    "voc2007", "cifar10_jpeg", "imagefolder",
)  # fmt: skip
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip


class DownstreamDatasetSpec(Strict):
    """One transfer dataset: a name of the downstream registry, where its files are (torchvision's
    layout, or an ImageFolder tree root/train/<class>/* + root/test|val/<class>/*)."""

    name: str
    root: str | None = Field(None, description="folder of the files (ImageFolder: train/, test/)")
    download: bool = Field(False, description="torchvision download when root is empty")
    max_train: int | None = Field(None, ge=1, description="evenly spaced subset of the train split")
    max_test: int | None = Field(None, ge=1, description="evenly spaced subset of the test split")
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="its name in the metrics (transfer/<label>/acc1); default: the dataset name, "
        "or the root folder's name for imagefolder",
    )

    @property
    def key(self) -> str:
        """The metric name: `label`, else the dataset name (imagefolder: its folder's name)."""
        if self.label is not None:
            return self.label
        if self.name == "imagefolder" and self.root is not None:
            folder = Path(self.root).expanduser().name
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", folder).lstrip("_.-") or "imagefolder"
        return self.name

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DOWNSTREAM_DATASETS:
            raise ValueError(
                f"unknown downstream dataset {name!r}; valid: {', '.join(DOWNSTREAM_DATASETS)}"
            )
        return name

    @model_validator(mode="after")
    def _root(self) -> DownstreamDatasetSpec:
        if self.name == "imagefolder" and self.root is None:
            raise ValueError("root: the imagefolder downstream dataset needs root (train/, test/)")
        return self


class TransferSpec(Strict):
    """Linear transfer (Khosla et al.): a linear probe on the frozen encoder per dataset."""

    datasets: list[DownstreamDatasetSpec] = Field(min_length=1)
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)
    image_size: int | None = Field(None, ge=4, description="default: the trial's input size")
    reference_loss: str = Field("ce", description="the report's relative change is against it")

    @model_validator(mode="after")
    def _distinct_keys(self) -> TransferSpec:
        keys = [d.key for d in self.datasets]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(
                    f"datasets[{i}]: its metrics would be transfer/{key}/..., as those of "
                    f"datasets[{keys.index(key)}]; give each a distinct `label`"
                )
        return self


class LongTailEvalSpec(Strict):
    """Many/medium/few-shot accuracy; active when the training class counts are not all equal."""

    enabled: bool = True
    many_threshold: int = Field(100, ge=1, description="many-shot: more than this many images")
    few_threshold: int = Field(20, ge=1, description="few-shot: fewer than this many images")

    @model_validator(mode="after")
    def _order(self) -> LongTailEvalSpec:
        if self.few_threshold > self.many_threshold:
            raise ValueError(
                f"few_threshold: {self.few_threshold} exceeds many_threshold "
                f"{self.many_threshold}; lower it or raise many_threshold"
            )
        return self


class CorruptionSpec(Strict):
    """ImageNet-C style robustness: corruptions x severities on the test set."""

    corruptions: list[str] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    severities: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5], min_length=1)
    imagenet_c_root: str | None = Field(
        None, description="ImageNet-C folder (<corruption>/<severity>/<wnid>/*); None: generate"
    )
    max_images: int | None = Field(None, ge=1, description="evenly spaced subset of the test set")
    seed: int = 0

    @field_validator("corruptions")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        bad = [n for n in names if n not in CORRUPTIONS]
        if bad:
            raise ValueError(f"unknown corruption(s) {bad}; valid: {', '.join(CORRUPTIONS)}")
        return names

    @field_validator("severities")
    @classmethod
    def _levels(cls, levels: list[int]) -> list[int]:
        if any(s not in (1, 2, 3, 4, 5) for s in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"severities must be distinct values in 1..5, got {levels}")
        return levels


class ConvergenceSpec(Strict):
    """The convergence clock (spec/metrics.md, "Convergence speed")."""

    ewma_alpha: float = Field(0.1, gt=0, le=1, description="EWMA smoothing of the closeness")
    reference_loss: str = Field(
        "ce", description="steps_to_ref: the loss whose trial (same seed) is the reference"
    )

    @field_validator("reference_loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        from ncstudy.losses import list_losses

        if name not in list_losses():
            raise ValueError(f"unknown loss {name!r}; valid: {', '.join(list_losses())}")
        return name


class EvaluationSpec(Strict):
    probes: ProbeSpec = Field(default_factory=ProbeSpec)
    transfer: TransferSpec | None = None
    longtail: LongTailEvalSpec = Field(default_factory=LongTailEvalSpec)
    corruptions: CorruptionSpec | None = None
    every: int = Field(1, ge=1, description="epochs between evaluations")
    checkpoint_every: int | None = Field(
        None, ge=1, description="epochs between checkpoints; default: at every evaluation"
    )
    convergence: ConvergenceSpec = Field(default_factory=ConvergenceSpec)
    nc_metrics: bool = True
    nc_on_test: bool = False
    max_intra_classes: int = Field(100, ge=1)
    eval_batch_size: int = Field(512, ge=1)


class UFMSpec(Strict):
    """An unconstrained-feature-model problem (spec/ufm.md): free features, one per sample."""

    K: int = Field(4, ge=2, description="number of classes")
    d: int = Field(8, ge=2, description="feature dimension")
    n_per_class: int = Field(5, ge=1, description="free features (samples) per class")
    variant: Literal["spherical", "regularized"] = Field(
        "spherical", description="unit-sphere features and weights, or weight-decayed ones"
    )
    iterations: int = Field(500, ge=1, description="gradient steps (Armijo backtracking)")
    step: float = Field(1.0, gt=0, description="initial step size of the line search")
    memory: int = Field(
        10,
        ge=0,
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


class RangeSpec(Strict):
    """A continuous search range."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


SEARCHABLE = ("temperature", "batch_size", "train.", "loss.")
# The metrics in every epoch's report to Ray Tune (train.py, ufm/runner.py), and which way is
# better: the only ones a search may select and prune on. Tune stops the whole study at the
# first report without the search metric; `nc/*` never reaches Tune, `best/*`, `final/*` and
# the probe accuracies only at some epochs.
SEARCH_METRICS = {"val/acc1": "max", "train/acc1": "max", "train/loss": "min"}


class SearchSpec(Strict):
    """An Optuna search (per loss) that replaces the grid: Ray Tune runs it with OptunaSearch
    and an optional pruner; the Optuna study is stored in SQLite next to the results."""

    type: Literal["optuna"] = "optuna"
    n_trials: int | None = Field(None, ge=1, description="per loss; grid sampler: grid size")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int = 0
    pruner: Literal["asha", "median", "none"] = "asha"
    grace_epochs: int = Field(1, ge=1, description="epochs before a trial may be pruned")
    metric: str = "val/acc1"
    mode: Literal["max", "min"] = "max"
    space: dict[str, RangeSpec | list[Any]]

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        if not self.space:
            raise ValueError("space is empty; search e.g. {temperature: {low: 0.05, high: 1}}")
        for name, dim in self.space.items():
            if not name.startswith(SEARCHABLE) or name in ("train.", "loss."):
                raise ValueError(
                    f"space.{name}: searchable are temperature, batch_size, train.<field> "
                    "and loss.<param>"
                )
            if isinstance(dim, list) and not dim:
                raise ValueError(f"space.{name}: an empty list of choices")
        ranges = [n for n, d in self.space.items() if isinstance(d, RangeSpec)]
        if ranges and self.sampler == "grid":
            raise ValueError(f"sampler: grid needs lists of values, but {ranges} are ranges")
        if not ranges and self.sampler == "cmaes":
            raise ValueError("sampler: cmaes needs at least one continuous range")
        if isinstance(self.space.get("batch_size", []), RangeSpec):
            raise ValueError("space.batch_size: give a list of batch sizes (categorical)")
        if self.sampler != "grid" and self.n_trials is None:
            raise ValueError(f"n_trials: the {self.sampler} sampler needs a number of trials")
        self._check_metric()
        return self

    def _check_metric(self) -> None:
        choices = ", ".join(SEARCH_METRICS)
        if self.metric.startswith("test/"):
            raise ValueError(
                f"metric: {self.metric} is measured on the test set; selecting or pruning on it "
                "makes the reported test accuracy a biased estimate (model selection never "
                f"looks at the test set); use val/acc1 (or one of {choices})"
            )
        if self.metric not in SEARCH_METRICS:
            raise ValueError(
                f"metric: {self.metric!r} is not in every epoch's report to Ray Tune (Tune "
                f"stops the study at the first report without it); use one of {choices}"
            )
        better = SEARCH_METRICS[self.metric]
        if self.mode != better:
            word = "higher" if better == "max" else "lower"
            raise ValueError(f"mode: {self.metric} is better {word}; set mode: {better}")


def _check_search_metric(study: StudySpec) -> None:
    """The search metric must be in every epoch's report of every trial the search runs. UFM
    trials report val/acc1, train/acc1 and train/loss at every report."""
    from ncstudy.losses.registry import predicts_with_class_means

    search = study.search
    if search is None or study.ufm is not None:
        return
    if search.metric == "val/acc1" and study.dataset.val_fraction == 0:
        raise ValueError(
            "search.metric: val/acc1 needs a validation split, but dataset.val_fraction is 0; "
            "set it > 0 (e.g. 0.15) or search on train/loss"
        )
    for i, loss in enumerate(study.losses):
        if not predicts_with_class_means(loss.name):
            continue
        # its classifier is the class means of an evaluation pass (train.py): no running
        # training accuracy, and a validation accuracy only at evaluation epochs
        where = f"losses[{i}] ({loss.name}) predicts with class-mean prototypes"
        if search.metric == "train/acc1":
            raise ValueError(
                f"search.metric: {where}, so it has no per-epoch train/acc1; search on "
                "val/acc1 (with evaluation.every: 1) or train/loss"
            )
        if search.metric == "val/acc1" and study.evaluation.every != 1:
            raise ValueError(
                f"evaluation.every: {where}, which exist only after an evaluation, so it "
                f"reports val/acc1 only every {study.evaluation.every} epochs and the search "
                "needs it at every epoch; set evaluation.every: 1 or search.metric: train/loss"
            )


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

        _check_loss_train(self)
        _check_search_metric(self)
        if self.model.name == UFM_MODEL or self.ufm is not None:
            for path, values in self.grid.axes.items():
                _check_axis(self, path, values)
            _check_ufm_study(self)
            _check_loss_values(self)
            return self
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
    ufm: UFMSpec | None = None

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
    """Format pydantic errors as 'field.path: message' lines; an unknown field lists the
    fields allowed where it stands."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"])
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    """'unknown field; allowed: ...' (with the closest spelling) for the section at `loc`."""
    import difflib

    model: Any = StudySpec
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: the list's items are `model`
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _section_model(field.annotation) if field is not None else None
    if model is None:
        return "unknown field; check its spelling against the documented fields"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field{hint}; allowed here: {', '.join(allowed)}"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _check_temperatures(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("the temperature list is empty; give at least one value")
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"temperatures must be finite and > 0 (logits are cos/tau), got {bad}")
    if len(set(values)) != len(values):
        raise ValueError(f"repeated temperatures in {values}")
    return values


_AXIS_SECTIONS: dict[str, type[Strict]] = {
    "train": TrainSpec,
    "model": ModelSpec,
    "dataset": DatasetSpec,
    "ufm": UFMSpec,
}
# UFM trials: the whole sample set is one batch; at most this many reports per trial.
UFM_MAX_REPORTS = 1000


def _check_train_override(values: dict[str, Any]) -> dict[str, Any]:
    """A loss's `train:` override: known TrainSpec fields (extra="forbid"), each value valid on
    its own; the merged recipe is checked by `_check_loss_train`."""
    from typing import Annotated

    from pydantic import TypeAdapter

    fields = TrainSpec.model_fields
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{key}: unknown field; valid: {', '.join(fields)} (as in `train:`)")
        field = fields[key]
        try:
            out[key] = TypeAdapter(Annotated[field.annotation, field]).validate_python(value)
        except ValidationError as err:
            raise ValueError(f"{key}: {err.errors()[0]['msg']}") from None
    return out


def _check_loss_train(study: StudySpec) -> None:
    """Each loss's `train:` merged over the study's must be a valid TrainSpec, and must not
    also be varied by a grid axis or the search space (which value would win is unclear)."""
    varied = set(study.grid.axes) | set(study.search.space if study.search else {})
    for i, loss in enumerate(study.losses):
        if not loss.train:
            continue
        where = f"losses[{i}] ({loss.name}).train"
        if study.model.name == UFM_MODEL:
            raise ValueError(f"{where}: UFM trials take their settings from `ufm:`; remove it")
        clash = sorted(f"train.{k}" for k in loss.train if f"train.{k}" in varied)
        if clash:
            raise ValueError(
                f"{where}: {clash[0]} is also a grid axis or search dimension; keep one of them"
            )
        if study.search is not None and loss.train.get("epochs", study.train.epochs) != (
            study.train.epochs
        ):
            raise ValueError(
                f"{where}.epochs: a search prunes every loss on the study's train.epochs "
                f"({study.train.epochs}); set epochs in `train:` instead"
            )
        try:
            TrainSpec.model_validate({**study.train.model_dump(exclude_unset=True), **loss.train})
        except ValidationError as err:
            reason = _first_error(err).removeprefix("(top level): ")
            raise ValueError(f"{where}: {reason}") from None


def _check_ufm_study(study: StudySpec) -> None:
    """A UFM study: model.name ufm with a ufm section, no dataset or batch sizes, one process,
    and every loss valid for the variant (also under each ufm.* grid value)."""
    if study.model.name != UFM_MODEL:
        raise ValueError(f"ufm: set model.name: {UFM_MODEL} to run UFM trials, or remove `ufm`")
    if study.ufm is None:
        raise ValueError(
            f"model.name: {UFM_MODEL} needs a `ufm:` section (K, d, n_per_class, variant, ...)"
        )
    if "dataset" in study.model_fields_set:
        raise ValueError("dataset: UFM trials have no dataset (features are free); remove it")
    if "batch_size" in study.grid.model_fields_set:
        raise ValueError(
            "grid.batch_size: UFM trials use the whole sample set as one batch; remove it"
        )
    if study.resources.workers_per_trial != 1:
        raise ValueError("resources.workers_per_trial: UFM trials run in one process; set 1")
    reports = study.ufm.iterations // study.evaluation.every
    if reports > UFM_MAX_REPORTS:
        raise ValueError(
            f"evaluation.every: a UFM trial reports every `every` iterations; {reports} reports "
            f"is too many, raise it to at least {study.ufm.iterations // UFM_MAX_REPORTS}"
        )
    ufm_axes = {p: v for p, v in study.grid.axes.items() if p.startswith("ufm.")}
    base = study.ufm.model_dump(exclude_unset=True)
    for combo in itertools.product(*ufm_axes.values()):
        values = {p.partition(".")[2]: v for p, v in zip(ufm_axes, combo, strict=True)}
        try:
            ufm = UFMSpec.model_validate({**base, **values})
        except ValidationError as err:
            raise ValueError(f"grid.axes ({values}): {_first_error(err)}") from None
        for i, loss in enumerate(study.losses):
            try:
                check_ufm_loss(loss.name, loss.params, ufm)
            except ValueError as err:
                where = f" with {values}" if values else ""
                raise ValueError(f"losses[{i}] ({loss.name}){where}: {err}") from None


def check_ufm_loss(name: str, params: dict[str, Any], ufm: UFMSpec) -> None:
    """A loss must fit the UFM variant and dimensions (raises ValueError with the fix)."""
    from ncstudy.losses import check_loss_compat
    from ncstudy.ufm import REGULARIZED_LOSSES, SPHERICAL_LOSSES
    from ncstudy.ufm.spherical import POSITIVE_LOSSES

    parsed = check_loss_compat(name, params, ufm.d, ufm.K)
    if getattr(parsed, "queue_size", 0) > 0:
        raise ValueError(
            "queue_size: the UFM optimises the whole sample set as one batch, so a queue would "
            "add stale copies of the same free features to the pool (and every line-search "
            "evaluation would push to it); set queue_size: 0"
        )
    allowed = SPHERICAL_LOSSES if ufm.variant == "spherical" else REGULARIZED_LOSSES
    if name not in allowed:
        other = "regularized" if ufm.variant == "spherical" else "spherical"
        raise ValueError(
            f"ufm.variant {ufm.variant} takes the losses {', '.join(allowed)}; "
            f"use ufm.variant: {other} for {name!r}"
        )
    if name == "supcon":
        if params.get("projection") != "none":
            raise ValueError(
                "supcon in the UFM acts on the free features themselves: set "
                "params: {projection: none}"
            )
        views = int(params.get("views", 2))
        if (ufm.K * ufm.n_per_class) % views:
            raise ValueError(
                f"supcon stacks its {views} views over the K*n_per_class = "
                f"{ufm.K * ufm.n_per_class} free features: make that a multiple of {views}"
            )
    if ufm.log_loss and name not in POSITIVE_LOSSES:
        raise ValueError(
            f"ufm.log_loss needs a positive loss ({', '.join(POSITIVE_LOSSES)}); "
            f"{name!r} can be negative: set log_loss: false"
        )


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
            raise ValueError(_no_such_loss_param(study, where, field))
        return
    if section not in _AXIS_SECTIONS or field not in _AXIS_SECTIONS[section].model_fields:
        raise ValueError(
            f"{where}: unknown axis; use train.<field>, model.<field>, dataset.<field> or "
            "loss.<param> (temperature, batch_size and seed have their own grid lists)"
        )
    if getattr(study, section) is None:
        raise ValueError(f"{where}: the study has no `{section}:` section to vary")
    base = getattr(study, section).model_dump(exclude_unset=True)
    for v in values:
        try:
            _AXIS_SECTIONS[section].model_validate({**base, field: v})
        except ValidationError as err:
            raise ValueError(f"{where}={v!r}: {_first_error(err)}") from None


def _check_loss_values(study: StudySpec) -> None:
    """Every value that a grid axis or a search space gives a loss (a `loss.<param>`, a searched
    temperature, a `model.feature_dim`/dataset/ufm axis that changes d or K) passes the checks
    of a plain loss entry, so a bad value stops the study here, not inside a Ray worker."""
    from ncstudy.losses import loss_params_model

    if study.search is not None:
        _check_search_values(study)
    targets = _loss_targets(study)
    for i, loss in enumerate(study.losses):
        fields = loss_params_model(loss.name).model_fields
        for origin, entries in _loss_value_sources(study).items():
            mine = {param: values for param, values in entries.items() if param in fields}
            for combo in itertools.product(*mine.values()):
                chosen = dict(zip(mine, combo, strict=True))
                given = ", ".join(f"{origin}.loss.{f}={v!r}" for f, v in chosen.items())
                given += ": " if given else ""
                for context, check in targets:
                    try:
                        check(loss.name, {**loss.params, **chosen})
                    except ValueError as err:
                        raise ValueError(
                            f"{given}losses[{i}] ({loss.name}){context}: {err}"
                        ) from None


def _loss_value_sources(study: StudySpec) -> dict[str, dict[str, list[Any]]]:
    """The values each origin can give a loss parameter: grid axes (every combination runs)
    and search-space choices or range endpoints."""
    grid = {p[5:]: list(v) for p, v in study.grid.axes.items() if p.startswith("loss.")}
    out = {"grid.axes": grid}
    if study.search is not None:
        out["search.space"] = {
            p[5:]: d if isinstance(d, list) else [d.low, d.high]
            for p, d in study.search.space.items()
            if p.startswith("loss.")
        }
    return out


def _loss_targets(study: StudySpec) -> list[tuple[str, Any]]:
    """(context, check(name, params)) for every (d, K) or UFM problem the study's axes reach."""
    from ncstudy.data.registry import dataset_num_classes
    from ncstudy.losses import check_loss_compat

    axes = study.grid.axes
    if study.ufm is not None:
        ufm_axes = {p: v for p, v in axes.items() if p.startswith("ufm.")}
        base = study.ufm.model_dump(exclude_unset=True)
        targets = []
        for combo in itertools.product(*ufm_axes.values()):
            values = {p.partition(".")[2]: v for p, v in zip(ufm_axes, combo, strict=True)}
            ufm = UFMSpec.model_validate({**base, **values})
            context = f" with {values}" if values else ""
            targets.append((context, lambda n, p, u=ufm: check_ufm_loss(n, p, u)))
        return targets
    dims = axes.get("model.feature_dim", [study.model.feature_dim])
    data_axes = {p: v for p, v in axes.items() if p.startswith("dataset.")}
    base = study.dataset.model_dump(exclude_unset=True)
    classes = {
        dataset_num_classes(
            DatasetSpec.model_validate(
                {**base, **{p.partition(".")[2]: v for p, v in zip(data_axes, c, strict=True)}}
            )
        )
        for c in itertools.product(*data_axes.values())
    }
    return [
        (
            f" with model.feature_dim={d}, {k} classes" if len(dims) * len(classes) > 1 else "",
            lambda n, p, d=d, k=k: check_loss_compat(n, p, d, k),
        )
        for d in dims
        for k in sorted(classes)
    ]


def _check_search_values(study: StudySpec) -> None:
    """Search-space entries: every choice and range endpoint is a valid value of its field,
    ranges only on real-valued fields (a sampled 3.7 is no queue size)."""
    from ncstudy.losses import loss_params_model

    assert study.search is not None
    for path, dim in study.search.space.items():
        where = f"search.space.{path}"
        values = dim if isinstance(dim, list) else [dim.low, dim.high]
        section, _, field = path.partition(".")
        if path == "temperature":
            bad = [v for v in values if not _positive_real(v)]
            if bad:
                raise ValueError(
                    f"{where}: temperatures must be finite numbers > 0 (logits are cos/tau), "
                    f"got {bad}"
                )
        elif path == "batch_size":
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad:
                raise ValueError(f"{where}: batch sizes must be integers >= 1, got {bad}")
        elif section == "loss":
            infos = [loss_params_model(s.name).model_fields.get(field) for s in study.losses]
            infos = [info for info in infos if info is not None]
            if field == "temperature" or not infos:
                raise ValueError(_no_such_loss_param(study, where, field))
            if not isinstance(dim, list) and not all(_takes_reals(i) for i in infos):
                raise ValueError(
                    f"{where}: a range samples real numbers, but {field} is not real-valued; "
                    "give a list of values"
                )
        elif section == "train":
            if field not in TrainSpec.model_fields:
                raise ValueError(f"{where}: train has no field {field!r}")
            if not isinstance(dim, list) and not _takes_reals(TrainSpec.model_fields[field]):
                raise ValueError(
                    f"{where}: a range samples real numbers, but train.{field} is not "
                    "real-valued; give a list of values"
                )
            base = study.train.model_dump(exclude_unset=True)
            for v in values:
                try:
                    TrainSpec.model_validate({**base, field: v})
                except ValidationError as err:
                    raise ValueError(f"{where}={v!r}: {_first_error(err)}") from None


def _no_such_loss_param(study: StudySpec, where: str, field: str) -> str:
    """The error of a `loss.<param>` axis or search entry that no loss of the study has."""
    from ncstudy.losses import loss_params_model

    params = {
        s.name: [f for f in loss_params_model(s.name).model_fields if f != "temperature"]
        for s in study.losses
    }
    valid = "; ".join(f"{name}: {', '.join(p) or 'none'}" for name, p in params.items())
    return (
        f"{where}: no loss of this study has a parameter {field!r} (the temperature is its own "
        f"axis, `temperature`); the losses' parameters are {valid}"
    )


def _positive_real(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _takes_reals(info: Any) -> bool:
    """Whether a pydantic field accepts real numbers (float, or float | None)."""
    return float in (get_args(info.annotation) or (info.annotation,))


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
        for s in _AXIS_SECTIONS
        if getattr(study, s) is not None
    }
    sections["train"].update(loss.train)  # the loss's own recipe (e.g. SupCon's lr)
    params = dict(loss.params)
    for path, value in axes.items():
        section, _, field = path.partition(".")
        (params if section == "loss" else sections[section])[field] = value
    if temp is not None:
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
        temperature=temp,
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
