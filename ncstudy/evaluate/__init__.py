"""Evaluation: classifiers for frozen representations (lp, nlp probes)."""

from ncstudy.evaluate.probes import (
    LinearProbe,
    NormalizedProbe,
    probe_accuracy,
    train_linear_probe,
)

__all__ = [
    "LinearProbe",
    "NormalizedProbe",
    "probe_accuracy",
    "train_linear_probe",
]
