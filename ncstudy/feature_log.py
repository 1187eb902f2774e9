"""The 2-D picture of Jiang et al.'s Figure 4 needs the features themselves: a trial whose
encoder has feature_dim 2 logs, at its end, the test features, labels and classifier rows as the
artifact `features/test_2d.npz` (rank 0, un-augmented test set, eval mode), so the report draws
the scatter from MLflow alone."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ncstudy.runlog import RunLogger

FEATURES_DIR, FEATURES_FILE = "features", "test_2d.npz"
MAX_POINTS = 5_000  # the scatter needs no more (the first ones of the test set)


@torch.no_grad()
def features_2d(
    encoder: nn.Module, criterion: Any, test: Dataset, device: torch.device
) -> dict[str, np.ndarray]:
    """The features (N, 2), labels (N,) and classifier rows (K, 2) of up to MAX_POINTS test
    samples, in eval mode (the modes are restored)."""
    modes = encoder.training, criterion.training
    encoder.eval(), criterion.eval()
    feats, labels = [], []
    seen = 0
    for x, y in DataLoader(test, batch_size=256):
        feats.append(encoder(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
        seen += len(y)
        if seen >= MAX_POINTS:
            break
    encoder.train(modes[0]), criterion.train(modes[1])
    weights = criterion.classifier_weights()
    return {
        "features": torch.cat(feats)[:MAX_POINTS].numpy(),
        "labels": torch.cat(labels)[:MAX_POINTS].numpy(),
        "weights": np.zeros((0, 2)) if weights is None else weights.float().cpu().numpy(),
    }


def log_features_2d(
    encoder: nn.Module, criterion: Any, test: Dataset, device: torch.device, log: RunLogger
) -> None:
    """Log `features/test_2d.npz` when the encoder's features are 2-D and the run logs."""
    if log.run is None or getattr(encoder, "feature_dim", None) != 2 or len(test) == 0:  # type: ignore[arg-type]
        return
    arrays = features_2d(encoder, criterion, test, device)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / FEATURES_FILE, **arrays)
        log.client.log_artifacts(log.run.run_id, tmp, FEATURES_DIR)
