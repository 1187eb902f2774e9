"""The `evaluation:` section: cadence, NC metrics, the convergence clock, SCL probes and the
downstream evaluations (transfer, long tail, corruptions)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ncstudy.config.ood import OODDatasetSpec, distinct_keys
from ncstudy.config.sections import MAX_EPOCHS, MAX_IMAGE_SIZE, BatchSize, Epochs, Seed, Strict


class ProbeSpec(Strict):
    """Linear probes on the frozen encoder of SCL trials (lp: linear + CE; nlp: NormFace)."""

    enabled: bool = True
    epochs: Epochs = 30
    lr: float = Field(0.5, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(0.1, gt=0, description="nlp's NormFace temperature")
    batch_size: BatchSize = 256
    milestones: list[int] = Field(
        default_factory=list, description="epochs after which the lr is multiplied by lr_decay"
    )
    lr_decay: float = Field(0.2, gt=0, le=1, description="step-decay factor at each milestone")
    augment: Literal["cached", "both"] = Field(
        "cached",
        description="cached: lp / nlp on cached un-augmented features; both: also the standard "
        "lp re-augmented every epoch through the frozen encoder (lp_aug; the paper's Table 14)",
    )

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
    epochs: Epochs = 30
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: BatchSize = 256
    image_size: int | None = Field(
        None, ge=4, le=MAX_IMAGE_SIZE, description="default: the trial's input size"
    )
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
    seed: Seed = 0

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

    ewma_alpha: float = Field(
        0.1,
        gt=0,
        le=1,
        description="EWMA weight of one training iteration (time-aware: a measurement n "
        "iterations after the last weighs 1-(1-alpha)^n); 0.1 lags a jump by 29 iterations",
    )
    every_steps: int = Field(
        50,
        ge=1,
        le=1_000_000,
        description="training iterations between two clock passes (the tracked metrics on "
        "subset_size training samples), independent of `every`",
    )
    subset_size: int = Field(
        1000,
        ge=2,
        le=100_000,
        description="training samples (fixed, drawn with the trial's seed) the clock pass "
        "measures; held in memory as input tensors",
    )
    reference_loss: str = Field(
        "ce", description="steps_to_ref: the loss whose trial (same seed) is the reference"
    )

    @field_validator("reference_loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        # the loss registry imports torch: only while a study is validated
        from ncstudy.losses import list_losses

        if name not in list_losses():
            raise ValueError(f"unknown loss {name!r}; valid: {', '.join(list_losses())}")
        return name


class EvaluationSpec(Strict):
    probes: ProbeSpec = Field(default_factory=ProbeSpec)
    transfer: TransferSpec | None = None
    longtail: LongTailEvalSpec = Field(default_factory=LongTailEvalSpec)
    corruptions: CorruptionSpec | None = None
    ood: list[OODDatasetSpec] | None = Field(
        None, min_length=1, description="out-of-distribution test sets (ncstudy/evaluate/ood.py)"
    )
    _ood_keys = field_validator("ood")(distinct_keys)
    every: int = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between evaluations")
    checkpoint_every: int | None = Field(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="epochs between checkpoints; default: at every evaluation",
    )
    convergence: ConvergenceSpec = Field(default_factory=ConvergenceSpec)
    nc_metrics: bool = True
    nc_on_test: bool = False
    test_at_best_val: bool = Field(
        False,
        description="log test/acc1_at_best_val: the test accuracy at the best-val epoch "
        "(a test pass at each new best; needs dataset.val_fraction > 0)",
    )
    max_intra_classes: int = Field(100, ge=1, le=100_000)
    eval_batch_size: BatchSize = 512
    system_metrics: bool = Field(
        True, description="log MLflow's system metrics (CPU, GPU, memory) for each trial"
    )
