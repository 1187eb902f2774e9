"""A trained trial reloaded from MLflow alone: the MLflow model its run logged at the end
(mlflow_model.log_trial_model: encoder + loss head, the resolved trial as metadata)."""

from __future__ import annotations

import torch

from ncstudy.config import TrialSpec
from ncstudy.mlflow_model import TrialClassifier, model_uri


def load_trial_model(run_id: str, tracking_uri: str) -> tuple[TrialClassifier, TrialSpec]:
    """The trial's final network (encoder + loss head, eval mode, on the CPU) and its resolved
    trial, from the MLflow model `model` of its run (`mlflow.pytorch.load_model`)."""
    # mlflow's model flavour: only where a model is reloaded
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    uri = model_uri(run_id)
    with _use_tracking_uri(tracking_uri):
        try:
            meta = mlflow.models.get_model_info(uri).metadata or {}
            net = mlflow.pytorch.load_model(uri, map_location="cpu")
        except (OSError, MlflowException) as err:
            raise ValueError(
                f"MLflow run {run_id} has no readable model/ artifact ({err}); only network "
                "trials that finished log one"
            ) from None
    return net.eval(), TrialSpec.model_validate(meta["trial"])


@torch.no_grad()
def predict(net: TrialClassifier, x: torch.Tensor) -> torch.Tensor:
    """The class each input is predicted as, by the loss's own prediction rule."""
    return net(x).argmax(1)
