"""MLflow bookkeeping: one experiment and one parent run per study, one child run per trial,
found again by its trial key (so retries and `--resume` never duplicate a run)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml

# the store a study's output folder implies: owned by paths.py, kept here for its callers
from ncstudy.paths import default_tracking_uri as default_tracking_uri

TRIAL_KEY_TAG = "ncstudy.trial_key"
ROLE_TAG = "ncstudy.role"
REASON_TAG = "ncstudy.failure_reason"
STOPPED_AT_TAG = "ncstudy.stopped_at_epoch"  # the epoch a pruned trial's run stopped at
NOTE_TAG = "mlflow.note.content"  # MLflow's description of an experiment or a run
TERMINAL = {"FINISHED", "FAILED", "KILLED"}
GIT_COMMIT_ENV = "NCSTUDY_GIT_COMMIT"


SECRET_QUERY_KEYS = ("password", "passwd", "pwd", "token", "secret", "key", "sig")


def shown_uri(tracking_uri: str) -> str:
    """The tracking URI as printed in consoles, errors and reports: a password in it
    (postgresql://user:PASSWORD@host/db, https://user:PASSWORD@host) and secret-looking query
    values (?token=...) become ***, so no credential reaches a terminal log or a report file."""
    parts = urlsplit(tracking_uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}{sep and ':***'}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        hidden = [
            (k, "***" if any(w in k.lower() for w in SECRET_QUERY_KEYS) else v) for k, v in pairs
        ]
        query = urlencode(hidden, safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return tracking_uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def client(tracking_uri: str) -> Any:
    """An MlflowClient for an absolute tracking URI (trial processes have other cwds)."""
    from mlflow.tracking import MlflowClient  # mlflow (~1 s to import): only where it is used

    return MlflowClient(tracking_uri=tracking_uri)


class ConfigMismatch(ValueError):
    """An MLflow run with this trial key was made from a different configuration."""


def is_local_store(tracking_uri: str) -> bool:
    """Whether the MLflow store is a local file (sqlite://, file:// or a plain path) rather
    than a server (http://..., databricks)."""
    head, sep, _ = tracking_uri.partition("://")
    scheme = head.lower() if sep else None
    return scheme in ("sqlite", "file") or (
        scheme is None and not tracking_uri.startswith("databricks")
    )


def store_exists(tracking_uri: str) -> bool:
    """Whether the MLflow store already exists, asked without creating it: a SQLite (or file)
    store is a local path that may be absent; a server (http://...) always counts as there."""
    if is_local_store(tracking_uri):
        for prefix in ("sqlite:///", "file://"):
            if tracking_uri.startswith(prefix):
                return Path(tracking_uri[len(prefix) :]).exists()
        if "://" not in tracking_uri:
            return Path(tracking_uri).exists()
    return True


def find_study_run(tracking_uri: str, study_name: str) -> tuple[Any, str, Any] | None:
    """The study's experiment and parent run, `(client, experiment_id, run)`, or None if the
    store holds no parent run of that study. Read-only: a missing local store stays missing."""
    if not store_exists(tracking_uri):
        return None
    mlf = client(tracking_uri)
    exp = mlf.get_experiment_by_name(study_name)
    if exp is None:
        return None
    _check_active(exp)
    runs = find_runs(mlf, exp.experiment_id, ROLE_TAG, "study")
    return (mlf, exp.experiment_id, _oldest(runs)) if runs else None


def logged_study_yaml(mlf: Any, run_id: str) -> str | None:
    """The study YAML logged to a parent run, or None if it has none."""
    from mlflow.exceptions import MlflowException  # mlflow: only where it is used

    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(mlf.download_artifacts(run_id, "study.yaml", tmp)).read_text()
        except (OSError, MlflowException):
            return None


def _check_active(exp: Any) -> None:
    if exp.lifecycle_stage != "active":
        raise ValueError(
            f"the MLflow experiment '{exp.name}' was deleted but still holds the name; restore "
            f"it (mlflow experiments restore --experiment-id {exp.experiment_id}), delete it "
            "for good (mlflow gc), or give the study another name"
        )


def ensure_experiment(
    mlf: Any, name: str, artifact_root: Path | None, description: str = ""
) -> str:
    """The id of the experiment named `name`, created with artifacts under `artifact_root`;
    the study's description is its MLflow description (updated: --resume may change it)."""
    exp = mlf.get_experiment_by_name(name)
    if exp is not None:
        _check_active(exp)
        experiment_id = exp.experiment_id
    else:
        experiment_id = _create_experiment(mlf, name, artifact_root)
    if description:
        mlf.set_experiment_tag(experiment_id, NOTE_TAG, description)
    return experiment_id


def _create_experiment(mlf: Any, name: str, artifact_root: Path | None) -> str:
    """Create the experiment; one that another driver created since the lookup is read back."""
    from mlflow.exceptions import MlflowException  # mlflow: only where it is used

    location = (artifact_root / name).resolve().as_uri() if artifact_root else None
    try:
        return mlf.create_experiment(name, artifact_location=location)
    except MlflowException as err:  # another driver created it since the lookup (a server)
        exp = mlf.get_experiment_by_name(name)
        if exp is None or err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return exp.experiment_id


def find_runs(mlf: Any, experiment_id: str, tag: str, value: str) -> list[Any]:
    """All runs of the experiment whose tag `tag` equals `value`."""
    return mlf.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'")


def ensure_parent_run(
    mlf: Any, experiment_id: str, study_name: str, config_yaml: str, description: str = ""
) -> str:
    """The study's parent run (created once, with the study YAML as an artifact and the
    study's description as the run's MLflow description). Two drivers that create it at once
    (on a server) both keep the older one and delete their own; their lease on it
    (ownership.py) then decides which one runs."""
    run_id = _parent_run(mlf, experiment_id, study_name, config_yaml)
    if description:
        mlf.set_tag(run_id, NOTE_TAG, description)
    return run_id


def _parent_run(mlf: Any, experiment_id: str, study_name: str, config_yaml: str) -> str:
    runs = find_runs(mlf, experiment_id, ROLE_TAG, "study")
    if runs:
        run_id = _oldest(runs).info.run_id
        mlf.update_run(run_id, status="RUNNING")
        return run_id
    run = mlf.create_run(
        experiment_id,
        run_name=study_name,
        tags={ROLE_TAG: "study", "study": study_name, "git_commit": git_commit()},
    )
    mlf.log_text(run.info.run_id, config_yaml, "study.yaml")
    first = _oldest(find_runs(mlf, experiment_id, ROLE_TAG, "study") or [run])
    if first.info.run_id != run.info.run_id:
        mlf.delete_run(run.info.run_id)
        mlf.update_run(first.info.run_id, status="RUNNING")
    return first.info.run_id


def _oldest(runs: list[Any]) -> Any:
    """The first-made of several runs (start time, then id: the same choice in every driver)."""
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def ensure_child_run(mlf: Any, experiment_id: str, parent_id: str, trial: Any) -> str:
    """The trial's child run: the existing one with this trial key, or a new one with tags,
    params and the resolved config. Marked RUNNING either way."""
    runs = find_runs(mlf, experiment_id, TRIAL_KEY_TAG, trial.key)
    if runs:
        check_config_hash(runs[0], trial.config_hash())
        run_id = runs[0].info.run_id
        mlf.update_run(run_id, status="RUNNING")
        mlf.delete_tag(run_id, REASON_TAG) if REASON_TAG in runs[0].data.tags else None
        return run_id
    tags = {
        "mlflow.parentRunId": parent_id,
        ROLE_TAG: "trial",
        TRIAL_KEY_TAG: trial.key,
        "study": trial.study,
        "loss": trial.loss,
        "dataset": "ufm" if getattr(trial, "ufm", None) is not None else trial.dataset.name,
        "model": trial.model.name,
        "temperature": "none" if trial.temperature is None else str(trial.temperature),
        "batch_size": str(trial.batch_size),
        "seed": str(trial.seed),
        "config_hash": trial.config_hash(),
        "git_commit": git_commit(),
    }
    run = mlf.create_run(experiment_id, run_name=trial.key, tags=tags)
    run_id = run.info.run_id
    log_params(mlf, run_id, trial_params(trial))
    mlf.log_text(
        run_id, yaml.safe_dump(trial.model_dump(mode="json"), sort_keys=False), "trial.yaml"
    )
    return run_id


def trial_params(trial: Any) -> dict[str, Any]:
    """A trial's MLflow params: its resolved config, flattened. A loss without a temperature
    logs no `temperature` param (MLflow's plots would draw "None" as a number); its
    `temperature` tag says "none"."""
    params = flatten(trial.model_dump(mode="json", exclude={"key", "study"}))
    if params.get("temperature") is None:
        params.pop("temperature", None)
    return params


def config_hash_matches(run: Any, config_hash: str) -> bool:
    """Whether the run was made from the configuration with this hash (its `config_hash` tag)."""
    return run.data.tags.get("config_hash") == config_hash


def check_config_hash(run: Any, config_hash: str) -> None:
    """A run is only continued by the very trial that made it: same key and same config hash."""
    if not config_hash_matches(run, config_hash):
        logged = run.data.tags.get("config_hash")
        key = run.data.tags.get(TRIAL_KEY_TAG)
        raise ConfigMismatch(
            f"MLflow run {run.info.run_id} of trial {key} was made from another configuration "
            f"(config_hash {logged}, now {config_hash}); it is never reused: give the study "
            "another name or output folder"
        )


def log_params(mlf: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log params in batches of 100 (MLflow's limit per call)."""
    from mlflow.entities import Param  # mlflow: only where it is used

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        mlf.log_batch(run_id, params=items[i : i + 100])


def log_metrics(mlf: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Log finite numeric metrics at `step` in one batch (non-finite values are skipped, since
    MLflow stores NaN poorly; the trial's status says why a run stopped)."""
    from mlflow.entities import Metric  # mlflow: only where it is used

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(v)
    ]
    for i in range(0, len(items), 1000):
        mlf.log_batch(run_id, metrics=items[i : i + 1000])


def finish_run(mlf: Any, run_id: str, status: str, reason: str | None = None) -> None:
    """End a run as FINISHED, FAILED or KILLED, with the reason as a tag."""
    if reason:
        mlf.set_tag(run_id, REASON_TAG, reason[:4000])
    mlf.set_terminated(run_id, status=status)


def finish_pruned(mlf: Any, run_id: str, pruner: str, epoch: int | None) -> None:
    """End the run of a trial stopped by the search's pruner: KILLED, with the epoch it stopped
    at as a tag and in the reason."""
    mlf.set_tag(run_id, STOPPED_AT_TAG, str(epoch))
    finish_run(mlf, run_id, "KILLED", f"pruned by {pruner} at epoch {epoch}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@functools.cache
def git_commit() -> str:
    """The commit ncstudy runs from: `NCSTUDY_GIT_COMMIT` if set (the container image has no
    .git; its build passes the commit), else the checkout's HEAD, else 'unknown'."""
    if os.environ.get(GIT_COMMIT_ENV, "").strip():
        return os.environ[GIT_COMMIT_ENV].strip()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
