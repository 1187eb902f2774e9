"""When a study exists and what --resume accepts: a study exists once its folder holds the
marker or its MLflow store holds its parent run; --resume takes only the study its runs were
made from. Also the output-folder check. Reads only; writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ncstudy import tracking
from ncstudy.config import StudySpec, TrialSpec
from ncstudy.paths import MARKER, StudyError, StudyPaths
from ncstudy.trust import check_study_inputs


def check_can_start(
    study: StudySpec, resume: bool, paths: StudyPaths, trials: list[TrialSpec] | None = None
) -> None:
    """Refuse an existing study without --resume, --resume of a study that never started, and
    --resume of an edited study. A study exists when its folder holds the marker or when its
    MLflow store holds its parent run: the store is the record that outlives the folder (a
    RayJob's head pod, a deleted folder next to a kept mlflow.db, a new output folder writing to
    the same server). Reads only; creates nothing (a local store that is absent stays absent)."""
    check_writable(study.study_dir)
    check_study_inputs(study, paths)  # the study folder's owner, the stores
    marker = study.study_dir / MARKER
    record = _study_record(study.name, paths.tracking_uri)
    if not resume:
        _refuse_existing(study, paths, record is not None, marker.exists())
        return
    if record is None:
        if marker.exists():
            raise StudyError(
                f"--resume: {study.study_dir} holds study '{study.name}' but the MLflow store "
                f"{tracking.shown_uri(paths.tracking_uri)}"
                " has no run of it; set MLFLOW_TRACKING_URI to the store "
                "the study used, or remove that folder to start the study afresh"
            )
        raise StudyError(
            f"--resume: study '{study.name}' has no previous run in {study.study_dir} or in "
            f"the MLflow store {tracking.shown_uri(paths.tracking_uri)}; run it without --resume"
        )
    mlf, experiment_id, parent = record
    stored = tracking.logged_study_yaml(mlf, parent.info.run_id)
    if stored is None and marker.exists():
        stored = marker.read_text()
    if stored is None:
        raise StudyError(
            f"--resume: cannot tell which study the runs of '{study.name}' were made from (no "
            f"study.yaml on its MLflow parent run {parent.info.run_id}, no {marker}); run it "
            "under another name"
        )
    changes = study_changes(yaml.safe_load(stored), study)
    if changes:
        listed = "\n".join(f"  {c}" for c in changes)
        may = " and ".join(RESUME_MAY_CHANGE)
        raise StudyError(
            f"--resume: study '{study.name}' differs from the study its runs were made from:\n"
            f"{listed}\nonly {may} may change on --resume (Ray Tune restores every trial with "
            "its saved configuration, resources and concurrency); undo the edits, or run the "
            "edited study under another name"
        )
    if trials is not None:
        _check_trial_configs(mlf, experiment_id, trials)
    check_tune_state(study, paths, parent.data.tags.get("git_commit", "unknown"))


def _refuse_existing(study: StudySpec, paths: StudyPaths, in_store: bool, in_folder: bool) -> None:
    """A new study (no --resume) may not reuse the name of one the store or folder holds."""
    if in_store:
        raise StudyError(
            f"study '{study.name}' already exists: the MLflow store "
            f"{tracking.shown_uri(paths.tracking_uri)} holds its runs (experiment "
            f"'{study.name}'); pass --resume to finish its unfinished trials, or choose another "
            "study name"
        )
    if in_folder:
        raise StudyError(
            f"study '{study.name}' already exists in {study.study_dir}; pass --resume to "
            "finish its unfinished trials, or choose another name/output folder"
        )


def _study_record(name: str, tracking_uri: str) -> tuple[Any, str, Any] | None:
    """The study's MLflow parent run `(client, experiment_id, run)`, or None; read-only (a
    missing local store stays missing: `find_study_run` checks `store_exists`)."""
    from mlflow.exceptions import MlflowException  # mlflow: only where it is used

    try:
        return tracking.find_study_run(tracking_uri, name)
    except MlflowException as err:
        raise StudyError(
            f"cannot read the MLflow store {tracking.shown_uri(tracking_uri)}"
            f" ({err.message.splitlines()[0]}); "
            "check MLFLOW_TRACKING_URI and that the server is up"
        ) from None
    except ValueError as err:  # a deleted experiment that still holds the name
        raise StudyError(str(err)) from None


# Fields of a study that may differ on --resume: where it is written and what it says about
# itself. Everything else would be ignored by Tune's restore or would change the trials.
RESUME_MAY_CHANGE = ("description", "output_dir")
_ABSENT = "(absent)"


def study_changes(stored: Any, study: StudySpec) -> list[str]:
    """`field: before -> now` for every field of `study` that differs from the stored study
    (defaults filled in on both sides), except the fields that may change on --resume."""
    now = tracking.flatten(study.model_dump(mode="json"))
    if not isinstance(stored, dict):
        return [f"(the stored study is not a mapping: {str(stored)[:80]})"]
    try:
        before = tracking.flatten(StudySpec.model_validate(stored).model_dump(mode="json"))
    except ValidationError:  # written by another ncstudy version: compare what it says
        before = tracking.flatten(stored)

    def show(value: Any) -> str:
        text = _ABSENT if value is _ABSENT else json.dumps(value)
        return text if len(text) <= 80 else text[:77] + "..."

    changes = []
    for field in sorted(set(before) | set(now)):
        if field.split(".")[0] in RESUME_MAY_CHANGE:
            continue
        old, new = before.get(field, _ABSENT), now.get(field, _ABSENT)
        if old != new:
            changes.append(f"{field}: {show(old)} -> {show(new)}")
    return changes


def _check_trial_configs(mlf: Any, experiment_id: str, trials: list[TrialSpec]) -> None:
    """Every existing child run of a grid trial must carry that trial's config hash: a run is
    never continued by a trial with another configuration."""
    by_key = {t.key: t for t in trials}
    runs = mlf.search_runs(
        [experiment_id], filter_string=f"tags.`{tracking.ROLE_TAG}` = 'trial'", max_results=50000
    )
    stale = []
    for run in runs:
        trial = by_key.get(run.data.tags.get(tracking.TRIAL_KEY_TAG, ""))
        if trial is not None and not tracking.config_hash_matches(run, trial.config_hash()):
            stale.append(trial.key)
    if stale:
        raise StudyError(
            f"--resume: the MLflow runs of {', '.join(sorted(stale)[:3])}"
            + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
            + " were made from another configuration than the study now resolves to (its YAML "
            "is unchanged, so ncstudy's defaults changed: another version); runs are never "
            "reused across configurations: run the study under another name"
        )


def check_writable(path: Path) -> None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StudyError(
            f"output_dir: cannot create {path} ({probe} is not a writable folder); "
            "set output_dir (or --output) to a folder you can write"
        )


# Tune configs of a study started before every trial had one shape, `{"trial": ...}` (issue
# #13): a grid's trials also held "env"; a search's held "point", "study", "loss_index", "env"
# and its searcher (saved with them) produced that shape.
_SEARCH_SHAPE_BEFORE = ("point", "study", "loss_index")


def check_tune_state(study: StudySpec, paths: StudyPaths, started_by: str) -> None:
    """Refuse --resume of a search whose Ray Tune state was saved by an ncstudy before the one
    config shape: its saved searcher and pending trials cannot run here. (A grid saved then
    resumes: its trials hold the resolved trial under "trial", and "env" is ignored.)"""
    if study.search is None:
        return
    for loss in study.losses:
        tune_path = paths.tune_path(loss.name)
        keys = _saved_param_space_keys(tune_path)
        if keys is None:
            continue
        before = sorted({k.split("/")[0] for k in keys} & set(_SEARCH_SHAPE_BEFORE))
        if before:
            raise StudyError(
                f"--resume: Ray Tune's saved state of the {loss.name} search ({tune_path}) was "
                f"written by an earlier ncstudy (its trial configs hold {', '.join(before)}), "
                "which this version cannot continue; finish the study with the ncstudy that "
                f"started it (git commit {started_by}), or move {tune_path} aside and run "
                "--resume again: the Optuna study and MLflow keep every finished trial, and "
                "the unfinished ones run again"
            )


def _saved_param_space_keys(tune_path: str) -> list[str] | None:
    """The param space keys Ray Tune saved with its Tuner at `tune_path` (flattened, `a/b`),
    or None where there is no saved Tuner."""
    import pyarrow.fs  # pyarrow: only on --resume
    import ray.cloudpickle  # ray: only on --resume

    fs, path = pyarrow.fs.FileSystem.from_uri(
        tune_path if "://" in tune_path else Path(tune_path).resolve().as_uri()
    )
    pkl = f"{path}/tuner.pkl"
    if fs.get_file_info(pkl).type == pyarrow.fs.FileType.NotFound:
        return None
    try:
        with fs.open_input_file(pkl) as f:
            state = ray.cloudpickle.loads(f.readall())
        return list(state.get("__flattened_param_space_keys") or [])
    except Exception as err:  # noqa: BLE001 - any unreadable state gets the same advice
        raise StudyError(
            f"--resume: cannot read Ray Tune's saved state {pkl} ({type(err).__name__}: {err}); "
            f"move {tune_path} aside and run --resume again: MLflow keeps every finished "
            "trial, and the unfinished ones run again"
        ) from None
