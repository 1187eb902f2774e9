"""The `search:` section: an Optuna search per loss that replaces the grid."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ncstudy.config.sections import Strict


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
    grace_epochs: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="epochs before a trial may be pruned; default a third of train.epochs "
        "(at least 1): benchmarks/README.md, 'Optuna search against the full grid'",
    )
    startup_trials: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="tpe: random trials before TPE models the results; default a quarter of "
        "n_trials, 3 to 10 (Optuna's own default is 10)",
    )
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

    def grace(self, epochs: int) -> int:
        """Epochs before a trial may be pruned: the given value, else a third of `epochs` (ASHA
        judging at a third came within 0.33-0.37 points of the grid's best, at a quarter
        0.21-0.48, at 1 or 2 epochs 0.37-0.50: benchmarks/bench_search_replay.py)."""
        return self.grace_epochs or max(1, epochs // 3)

    def tpe_startup(self) -> int:
        """TPE's random start: the given value, else a quarter of the trials, 3 to 10."""
        if self.startup_trials is not None:
            return self.startup_trials
        return min(10, max(3, (self.n_trials or 0) // 4))

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
