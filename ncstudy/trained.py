"""A trained trial reloaded from MLflow alone: the `model/` artifact its run logged at the end
(the network's state_dict and the resolved trial) rebuilt into the encoder + loss head."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from ncstudy import tracking
from ncstudy.config import TrialSpec
from ncstudy.losses import build_loss
from ncstudy.models import build_model
from ncstudy.runlog import MODEL_DIR, MODEL_FILE, MODEL_META
from ncstudy.train import Network


def load_trial_model(run_id: str, tracking_uri: str) -> tuple[Network, TrialSpec]:
    """The trial's final network (encoder + loss head, eval mode, on the CPU) and its resolved
    trial, from the `model/` artifact of its MLflow run."""
    from mlflow.exceptions import MlflowException  # mlflow: only where it is used

    mlf = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = Path(mlf.download_artifacts(run_id, MODEL_DIR, tmp))
            meta = json.loads((folder / MODEL_META).read_text())
            state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        except (OSError, MlflowException) as err:
            raise ValueError(
                f"MLflow run {run_id} has no readable {MODEL_DIR}/ artifact ({err}); only "
                "network trials that finished log one"
            ) from None
    trial = TrialSpec.model_validate(meta["trial"])
    encoder = build_model(trial.model, tuple(meta["input_shape"]))
    criterion = build_loss(
        trial.loss,
        trial.loss_params,
        feature_dim=encoder.feature_dim,
        num_classes=meta["num_classes"],
        seed=trial.seed,
    )
    net = Network(encoder, criterion)
    net.load_state_dict(state)
    return net.eval(), trial


@torch.no_grad()
def predict(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The class each input is predicted as, by the loss's own prediction rule."""
    return net.criterion.scores(net.encoder(x).float()).argmax(1)
