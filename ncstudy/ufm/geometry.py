"""The final configuration of a low-dimensional UFM trial (d <= 3) as a run artifact, so a
report can draw the features and classifier rows (Yaras et al. 2022, Figure 1) from MLflow alone.
Higher d is not logged: the picture needs 2 or 3 coordinates, and the arrays grow with N d."""

from __future__ import annotations

import json
from typing import Any

ARTIFACT = "ufm/geometry.json"
MAX_DIM = 3


def geometry(problem: Any) -> dict[str, Any]:
    """Features (N, d), labels (N,) and classifier rows (K, d, or None) as lists (`problem`:
    a SphericalUFM or RegularizedUFM, which both have `weights()`)."""
    weights = problem.weights()
    return {
        "features": problem.features.detach().double().tolist(),
        "labels": problem.labels.tolist(),
        "weights": None if weights is None else weights.detach().double().tolist(),
    }


def log_geometry(log: Any, problem: Any) -> None:
    """Log `ufm/geometry.json` to the trial's run when d <= 3 (nothing without a run)."""
    if log.run is None or problem.features.shape[1] > MAX_DIM:
        return
    log.client.log_text(log.run.run_id, json.dumps(geometry(problem)), ARTIFACT)
