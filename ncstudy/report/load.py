"""Read a study back from MLflow: one DataFrame row per trial (expected or found) and the
per-epoch histories of the metrics the figures draw.

The study's own YAML (its folder's `study.yaml`, else the parent run's artifact) gives the full
list of expected trials, so a partial study shows its never-started trials as such; when it
cannot be read, the report says so (`StudyData.warnings`) instead of silently showing fewer
trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ncstudy import tracking
from ncstudy.config import ConvergenceSpec, SpecError, expand, parse_study
from ncstudy.convergence_ref import (
    REFERENCE_TAG,
    metric_series,
    num_classes_of,
    quiet_downloads,
)
from ncstudy.data.registry import dataset_num_classes
from ncstudy.report.clock import fill_steps_to_ref
from ncstudy.search_tags import optuna_trial

NOT_STARTED = "NOT STARTED"
HISTORY_METRICS = ("val/acc1", "test/acc1", "train/acc1", "train/loss", "train/objective")
BASE_COLUMNS = [
    "key",
    "run_id",
    "status",
    "reason",
    "loss",
    "temperature",
    "batch_size",
    "seed",
    "dataset",
    "model",
    "axes",
    "setting",
    "epochs",
    "num_classes",
    "reference",
    "steps_to_ref_by",  # "study" (logged at its end) or "report" (computed from the histories)
    "clock_reference_loss",  # evaluation.convergence.reference_loss of the trial
    "clock_ewma_alpha",  # evaluation.convergence.ewma_alpha of the trial
    "transfer_reference_loss",  # evaluation.transfer.reference_loss (None without transfer)
    "imbalance_ratio",  # dataset.imbalance_ratio (NaN: the study asked for no long tail)
    "lt_many_threshold",  # evaluation.longtail.many_threshold (lt/* groups; NaN: not known)
    "lt_few_threshold",  # evaluation.longtail.few_threshold
    "optuna_trial",  # a search trial's Optuna number (its run's tag; None: not a search trial)
]
# ncstudy's defaults of those settings, for runs logged before they existed (they used these)
DEFAULTS = {
    "clock_reference_loss": ConvergenceSpec.model_fields["reference_loss"].default,
    "clock_ewma_alpha": ConvergenceSpec.model_fields["ewma_alpha"].default,
    "transfer_reference_loss": None,
}


class ReportError(RuntimeError):
    """A study that cannot be read back (no store, no such study); the message says the fix."""


@dataclass(frozen=True)
class StudyData:
    """A study read back from MLflow."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    trials: pd.DataFrame  # one row per trial: BASE_COLUMNS + every logged metric (latest value)
    histories: pd.DataFrame  # long form: key, metric, step, value
    spec: Any | None  # the StudySpec, when its YAML could be read and validated
    warnings: tuple[str, ...] = ()  # what the report could not do, shown at its top
    optuna_storage: str | None = None  # a search study's Optuna storage, where it exists


def open_client(tracking_uri: str) -> Any:
    """An MlflowClient; a local SQLite store must already exist (never create an empty one)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.exists():
            raise ReportError(
                f"no MLflow store at {path}; pass the study's output folder with --output "
                "(the folder that holds mlflow.db) or set MLFLOW_TRACKING_URI"
            )
    return tracking.client(tracking_uri)


def load_study_data(
    name: str, tracking_uri: str, study_yaml: Path | None = None, histories: bool = True
) -> StudyData:
    """Read the study `name` from the MLflow store at `tracking_uri`."""
    mlf = open_client(tracking_uri)
    exp = mlf.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in mlf.search_experiments() if e.name != "Default")
        raise ReportError(
            f"study {name!r} is not in the MLflow store {tracking.shown_uri(tracking_uri)}"
            "; studies there: "
            f"{', '.join(known) or 'none'}"
        )
    runs = mlf.search_runs([exp.experiment_id], max_results=50000)
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "study"]
    by_key = {
        r.data.tags[tracking.TRIAL_KEY_TAG]: r
        for r in runs
        if tracking.TRIAL_KEY_TAG in r.data.tags
    }
    parent_id = parents[0].info.run_id if parents else None
    spec, problem = _study_spec(mlf, parent_id, study_yaml)
    trials = trial_frame(spec, by_key)
    warnings = []
    if problem is not None:
        warnings.append(
            f"{problem}: trials that never started cannot be listed, so the tables show only "
            f"the {len(by_key)} trials with an MLflow run (and their own settings)"
        )
    if histories:
        hist = history_frame(mlf, by_key)
        trials = fill_steps_to_ref(trials, hist)
    else:
        hist = empty_histories()
    storage = optuna_storage(spec, study_yaml)
    return StudyData(
        name,
        tracking_uri,
        exp.experiment_id,
        parent_id,
        trials,
        hist,
        spec,
        tuple(warnings),
        storage,
    )


def optuna_storage(spec: Any | None, study_yaml: Path | None) -> str | None:
    """The Optuna storage URL of a search study (NCSTUDY_OPTUNA_STORAGE, else the study
    folder's optuna.db), or None: no search, no folder, or no such file (never created here)."""
    if spec is None or getattr(spec, "search", None) is None or study_yaml is None:
        return None
    from ncstudy.search import optuna_storage_url  # imports Ray: only for a search study

    url = optuna_storage_url(study_yaml.parent)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None
    return url


def _study_spec(
    mlf: Any, parent_id: str | None, study_yaml: Path | None
) -> tuple[Any | None, str | None]:
    """The StudySpec from the study folder's YAML, else from the parent run's artifact; or
    None and why it could not be read."""
    text, source = None, None
    if study_yaml is not None and study_yaml.exists():
        text, source = study_yaml.read_text(), str(study_yaml)
    elif parent_id is not None:
        with quiet_downloads():
            text = tracking.logged_study_yaml(mlf, parent_id)
        source = f"the study.yaml of parent run {parent_id}"
    if text is None:
        return None, "no study.yaml was found (study folder or parent-run artifact)"
    try:
        return parse_study(yaml.safe_load(text), "study.yaml"), None
    except (SpecError, yaml.YAMLError) as err:  # edited, or written by another version
        return None, f"{source} does not validate with this ncstudy ({err})"


def _expected(spec: Any | None) -> list[Any]:
    """The grid's trials; none for a search study (its trials are sampled as it runs)."""
    if spec is None or getattr(spec, "search", None) is not None:
        return []
    return expand(spec)


def trial_frame(spec: Any | None, by_key: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: the spec's trials in grid order, then any other run found."""
    rows = []
    seen = set()
    for t in _expected(spec):
        rows.append(_row_from_spec(t, by_key.get(t.key)))
        seen.add(t.key)
    for key, run in by_key.items():
        if key not in seen:
            rows.append(_row_from_run(key, run, spec))
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=BASE_COLUMNS)
    frame["setting"] = setting_labels(frame)
    metrics = sorted(c for c in frame.columns if c not in BASE_COLUMNS)
    return frame[BASE_COLUMNS + metrics]


def _row_from_spec(t: Any, run: Any | None) -> dict[str, Any]:
    row = {
        "key": t.key,
        "loss": t.loss,
        "temperature": math.nan if t.temperature is None else float(t.temperature),
        "batch_size": int(t.batch_size),
        "seed": int(t.seed),
        "dataset": t.dataset.name,
        "model": t.model.name,
        "axes": dict(t.axes),
        "epochs": int(t.ufm.iterations if t.ufm is not None else t.train.epochs),
        "num_classes": num_classes_of(t),
        "imbalance_ratio": _number(t.dataset.imbalance_ratio),
        **_settings(t),
    }
    return {**row, **_run_fields(run)}


def _settings(t: Any) -> dict[str, Any]:
    """The evaluation settings the report needs, from a TrialSpec or StudySpec."""
    ev = t.evaluation
    return {
        "clock_reference_loss": ev.convergence.reference_loss,
        "clock_ewma_alpha": float(ev.convergence.ewma_alpha),
        "transfer_reference_loss": ev.transfer.reference_loss if ev.transfer else None,
        "lt_many_threshold": float(ev.longtail.many_threshold),
        "lt_few_threshold": float(ev.longtail.few_threshold),
    }


def _row_from_run(key: str, run: Any, spec: Any | None) -> dict[str, Any]:
    """A run the spec does not list (a search trial, or no readable spec): its tags and
    params; the study's spec, where there is one, fills what they lack."""
    tags, params = run.data.tags, run.data.params
    temperature = tags.get("temperature", "none")
    epochs = params.get("train.epochs")
    row = {
        "key": key,
        "loss": tags.get("loss", "?"),
        "temperature": math.nan if temperature == "none" else float(temperature),
        "batch_size": int(tags.get("batch_size", 0)),
        "seed": int(tags.get("seed", 0)),
        "dataset": tags.get("dataset", "?"),
        "model": tags.get("model", "?"),
        "axes": {k[len("axes.") :]: v for k, v in params.items() if k.startswith("axes.")},
        "epochs": int(epochs) if epochs and epochs.isdigit() else math.nan,
        "num_classes": _study_num_classes(spec),
        "imbalance_ratio": _number(params.get("dataset.imbalance_ratio")),
        **(_settings(spec) if spec is not None else DEFAULTS),
    }
    logged = {
        "clock_reference_loss": params.get("evaluation.convergence.reference_loss"),
        "clock_ewma_alpha": params.get("evaluation.convergence.ewma_alpha"),
        "lt_many_threshold": params.get("evaluation.longtail.many_threshold"),
        "lt_few_threshold": params.get("evaluation.longtail.few_threshold"),
    }
    row.update({k: v for k, v in logged.items() if v is not None})
    row["clock_ewma_alpha"] = float(row["clock_ewma_alpha"])
    for name in ("lt_many_threshold", "lt_few_threshold"):
        row[name] = _number(row.get(name))
    transfer = params.get("evaluation.transfer.reference_loss")
    if transfer is not None:
        row["transfer_reference_loss"] = transfer
    return {**row, **_run_fields(run)}


def _number(value: Any) -> float:
    """A config value (or its logged string) as a float; NaN for None / "None"."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _study_num_classes(spec: Any | None) -> float:
    """K of every trial of a study whose trials share one dataset (a search), else NaN."""
    if spec is None or any(p.startswith("dataset.") or p == "ufm.K" for p in spec.grid.axes):
        return math.nan
    if spec.ufm is not None:
        return int(spec.ufm.K)
    return dataset_num_classes(spec.dataset)


def _run_fields(run: Any | None) -> dict[str, Any]:
    if run is None:
        empty = {"reason": None, "reference": None, "optuna_trial": None}
        return {"run_id": None, "status": NOT_STARTED, **empty}
    reference = run.data.tags.get(REFERENCE_TAG)
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "reason": run.data.tags.get(tracking.REASON_TAG),
        "reference": reference,
        "steps_to_ref_by": "study" if reference is not None else None,
        "optuna_trial": optuna_trial(run.data.tags),
        **run.data.metrics,
    }


def setting_labels(frame: pd.DataFrame) -> list[str]:
    """A short label for everything but loss, temperature, batch size and seed: the dataset,
    plus the model and each extra grid axis where they vary across the study."""
    axes_keys = sorted({k for axes in frame["axes"] for k in axes})
    varying_model = frame["model"].nunique() > 1
    labels = []
    for _, row in frame.iterrows():
        parts = [str(row["dataset"])]
        if varying_model:
            parts.append(str(row["model"]))
        parts += [f"{k}={row['axes'][k]}" for k in axes_keys if k in row["axes"]]
        labels.append(" ".join(parts))
    return labels


def empty_histories() -> pd.DataFrame:
    """A histories frame with no rows."""
    return pd.DataFrame({"key": [], "metric": [], "step": [], "value": []})


def history_frame(
    mlf: Any, by_key: dict[str, Any], metrics: Iterable[str] | None = None
) -> pd.DataFrame:
    """Per-step histories of the accuracies, the training loss, every `nc/` metric and the
    clock's `clock/` measurements (step: training iteration)."""
    jobs = []
    for key, run in by_key.items():
        names = metrics or [
            m for m in run.data.metrics if m.startswith(("nc/", "clock/")) or m in HISTORY_METRICS
        ]
        jobs += [(key, run.info.run_id, m) for m in names if m in run.data.metrics]

    def fetch(job: tuple[str, str, str]) -> pd.DataFrame:
        key, run_id, metric = job
        steps, values = metric_series(mlf, run_id, metric)
        return pd.DataFrame({"key": key, "metric": metric, "step": steps, "value": values})

    with ThreadPoolExecutor(max_workers=8) as pool:
        parts = list(pool.map(fetch, jobs))
    return pd.concat(parts, ignore_index=True) if parts else empty_histories()
