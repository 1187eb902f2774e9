"""`evaluation.ood`: out-of-distribution test sets the trained network classifies with its own
prediction rule (Kumar et al. 2022's CIFAR-10 -> STL-10), their labels mapped to the training
classes by name (ncstudy/evaluate/ood.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ncstudy.config.sections import Strict

OOD_DATASETS = ("stl10",)


class OODDatasetSpec(Strict):
    """One out-of-distribution test set: its files, its subset and how its classes map."""

    name: Literal["stl10"] = Field(description=f"the dataset; one of {', '.join(OOD_DATASETS)}")
    root: str | None = Field(
        None, description="folder holding stl10_binary/; default ~/.cache/ncstudy/stl10"
    )
    download: bool = Field(False, description="torchvision's download when the files are absent")
    split: Literal["test", "train"] = Field("test", description="the labelled split evaluated")
    max_test: int | None = Field(None, ge=1, description="evenly spaced subset of the split")
    classes: dict[str, str | None] = Field(
        default_factory=dict,
        description="its class name -> a training class name (null: drop the class); over the "
        "default: the same name, else the alias table (car -> automobile, ...)",
    )
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="its name in the metrics (ood/<label>/acc1); default: the dataset name",
    )

    @property
    def key(self) -> str:
        """The metric name: `label`, else the dataset name."""
        return self.label or self.name


def distinct_keys(specs: list[OODDatasetSpec] | None) -> list[OODDatasetSpec] | None:
    """Refuse two OOD sets whose metrics would share a name."""
    keys = [s.key for s in specs or []]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise ValueError(
                f"[{i}]: its metrics would be ood/{key}/..., as those of [{keys.index(key)}]; "
                "give each a distinct `label`"
            )
    return specs
