"""Evaluation: classifiers for frozen representations (lp, nlp probes; fp class means)."""

from ncstudy.evaluate.probes import (
    ClassMeanAccumulator,
    LinearProbe,
    NormalizedProbe,
    probe_accuracy,
    train_linear_probe,
)

__all__ = [
    "ClassMeanAccumulator",
    "LinearProbe",
    "NormalizedProbe",
    "probe_accuracy",
    "train_linear_probe",
]
