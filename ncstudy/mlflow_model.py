"""A trained trial as an MLflow model: the encoder and the loss head as one module whose forward
gives the loss's class scores (logits), logged with `mlflow.pytorch` to the trial's run under
the name `model`, with a signature from real inputs of the trial's data and the resolved trial
as its metadata. `mlflow.pytorch.load_model("runs:/RUN_ID/model")` reloads it."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

MODEL_NAME = "model"  # `runs:/RUN_ID/model`


class TrialClassifier(nn.Module):
    """The trained encoder and loss head (`.encoder`, `.criterion`, for new evaluations); its
    forward maps images (N, C, H, W) to the loss's class scores (N, classes), whose argmax is
    the loss's own prediction."""

    def __init__(self, encoder: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.encoder, self.criterion = encoder, criterion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.criterion.scores(self.encoder(x).float())


def model_uri(run_id: str) -> str:
    """The URI that `mlflow.pytorch.load_model` reloads a trial's model from."""
    return f"runs:/{run_id}/{MODEL_NAME}"


def log_trial_model(
    tracking_uri: str,
    run_id: str,
    net: nn.Module,
    meta: dict[str, Any],
    example: torch.Tensor,
) -> str:
    """Log `net` (a Network: `.encoder`, `.criterion`) as the run's MLflow model: a CPU copy
    in eval mode, pickled (any encoder, no tracing; reloading needs ncstudy importable), with
    the signature of `example` (a few inputs of the trial's data) and its scores, and `meta`
    (the resolved trial, input shape, class count) as metadata. Returns the model's URI."""
    # mlflow's model flavour: only in the process that logs the final model
    import mlflow.pytorch
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    model = TrialClassifier(*copy.deepcopy((net.encoder, net.criterion))).cpu().eval()
    with torch.no_grad():
        scores = model(example.cpu())
    signature = infer_signature(example.cpu().numpy(), scores.numpy())
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
    with _use_tracking_uri(tracking_uri):  # the fluent API's store: this run's, not the global
        mlflow.pytorch.log_model(
            model,
            name=MODEL_NAME,
            model_id=logged.model_id,
            signature=signature,
            serialization_format="pickle",
            # torch only: the pickled classes are ncstudy's, importable where ncstudy is
            # installed (it is no PyPI package: naming it would make pip fetch a stranger's)
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata=meta,
        )
    return model_uri(run_id)
