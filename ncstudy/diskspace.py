"""Enough free space before a study starts (issue 19, section 3): an estimate of what its
checkpoints and stores take, against what the disk holding them has free. A full disk
mid-study leaves half-written state; refusing up front costs a `shutil.disk_usage`.

The estimate: a checkpoint holds the network and its optimiser state (STATE_COPIES x the
parameters in float32); each trial keeps `resources.checkpoints_to_keep` of them, plus the one
being written; `concurrency` trials run at once; times MARGIN, plus STORE_BYTES for the MLflow
and Optuna stores and Tune's state."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ncstudy.config import StudySpec, TrialSpec
from ncstudy.data.registry import dataset_facts, dataset_num_classes
from ncstudy.paths import StudyError, StudyPaths

STATE_COPIES = 3  # the parameters, and up to two optimiser moments (Adam); SGD keeps one
MARGIN = 2
STORE_BYTES = 100 * 2**20
MB = 2**20


def parameter_count(trial: TrialSpec) -> int:
    """The trainable values of a trial: the encoder and a K x d head for a network (built on
    PyTorch's meta device: no memory, no data), the free features and classifier for a UFM."""
    if trial.ufm is not None:
        u = trial.ufm
        return u.num_samples * u.d + u.K * u.d + u.K
    import torch  # torch: only once a study is about to run (not for --dry-run or validation)

    from ncstudy.models import build_model  # the model registry imports torch

    channels = 1 if dataset_facts(trial.dataset.name).stats is None else 3
    with torch.device("meta"):
        encoder = build_model(trial.model, (channels, 32, 32))
    classes = dataset_num_classes(trial.dataset)
    head = classes * encoder.feature_dim + classes
    return sum(p.numel() for p in encoder.parameters()) + head


def checkpoint_bytes(trial: TrialSpec) -> int:
    """What one checkpoint of the trial takes on disk (float32 values)."""
    copies = STATE_COPIES
    if trial.ufm is not None:  # L-BFGS keeps `memory` curvature pairs of the variables
        copies = 1 + 2 * trial.ufm.memory
    return parameter_count(trial) * 4 * copies


def needed_bytes(study: StudySpec, trial: TrialSpec, concurrency: int) -> tuple[int, int]:
    """(bytes for the checkpoints in the storage, bytes for the stores in the output folder)."""
    kept = study.resources.checkpoints_to_keep + 1  # the newest is written before one goes
    return checkpoint_bytes(trial) * kept * concurrency * MARGIN, STORE_BYTES


def _existing(path: Path) -> Path:
    """The nearest existing ancestor of `path` (the disk the study will write to)."""
    while not path.exists():
        path = path.parent
    return path


def check_free_space(
    study: StudySpec, paths: StudyPaths, trial: TrialSpec, concurrency: int
) -> None:
    """Refuse (StudyError) a study whose estimate exceeds the free space of its local disks:
    the storage (unless it is s3:// or gs://) and the output folder, summed where they share one."""
    checkpoints, stores = needed_bytes(study, trial, concurrency)
    need: dict[int, tuple[Path, int]] = {}
    places = [(paths.output_dir, stores)]
    if "://" not in paths.storage:
        places.append((Path(paths.storage), checkpoints))
    for place, size in places:
        at = _existing(place)
        first, total = need.get(os.stat(at).st_dev, (at, 0))
        need[os.stat(at).st_dev] = (first, total + size)
    for at, size in need.values():
        free = shutil.disk_usage(at).free
        if free < size:
            raise StudyError(
                f"not enough free space for study '{study.name}': it needs about "
                f"{size / MB:,.0f} MB on the disk of {at} ({checkpoint_bytes(trial) / MB:,.1f} MB "
                f"per checkpoint x {study.resources.checkpoints_to_keep + 1} kept per trial x "
                f"{concurrency} trial(s) at once x {MARGIN}, + {STORE_BYTES // MB} MB for the "
                f"stores), {free / MB:,.0f} MB is free; free some space, choose another output "
                "folder / --storage-path, or lower resources.checkpoints_to_keep"
            )
