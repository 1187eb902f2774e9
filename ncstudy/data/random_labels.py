"""Random labels (Zhang et al. 2017; Yaras et al. 2022, Figure 4): the training labels replaced
by a seeded permutation of themselves, so every class keeps its size and the input no longer
predicts the label. Validation and test keep the true labels. The permutation is a function of
`dataset.label_seed` alone, and the trial records it in MLflow (`record_random_labels`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

from ncstudy.data.bundle import DataBundle
from ncstudy.data.label_view import LabelView, dataset_labels

ARTIFACT = "data/random_labels.json"
DIGEST_TAG = "ncstudy.random_labels_sha256"


def label_permutation(n: int, seed: int) -> np.ndarray:
    """The permutation sample i takes its new label from: new[i] = true[perm[i]]."""
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def with_random_labels(bundle: DataBundle, spec: Any) -> DataBundle:
    """The bundle with permuted training labels (`train`, `train_eval`, the SCL views alike);
    unchanged unless `spec.random_labels`."""
    if not spec.random_labels:
        return bundle
    true = dataset_labels(bundle.train_eval)
    new = true[label_permutation(len(true), spec.label_seed)]
    every = np.arange(len(true))

    def view(ds: Any) -> Any:
        return None if ds is None else LabelView(ds, every, new)

    return dataclasses.replace(
        bundle,
        train=view(bundle.train),
        train_eval=view(bundle.train_eval),
        train_contrastive=view(bundle.train_contrastive),
    )


def assignment(bundle: DataBundle, spec: Any) -> dict[str, Any]:
    """What reproduces the labels of a random-labelled bundle: the seed, the permutation, the
    true training labels and the labels trained on (labels[i] = true_labels[permutation[i]])."""
    view = bundle.train_eval
    true = dataset_labels(view.dataset)[view.indices]  # type: ignore[attr-defined]
    return {
        "label_seed": spec.label_seed,
        "permutation": label_permutation(len(true), spec.label_seed).tolist(),
        "true_labels": true.tolist(),
        "labels": dataset_labels(view).tolist(),
    }


def record_random_labels(log: Any, bundle: DataBundle, spec: Any) -> None:
    """Log the assignment as the run's artifact `data/random_labels.json` and its sha256 as a
    tag (a RunLogger without a run logs nothing)."""
    if not spec.random_labels or log.run is None:
        return
    text = json.dumps(assignment(bundle, spec))
    log.client.log_text(log.run.run_id, text, ARTIFACT)
    log.tag({DIGEST_TAG: hashlib.sha256(text.encode()).hexdigest()})
