"""`model.init_from`: start a trial's encoder from trained weights (fine-tuning, e.g. Jiang et
al.'s CMF fine-tuning): a state_dict file, or `runs:/<run_id>`, the `model/` artifact a finished
trial logged to this study's MLflow store. Only the encoder is taken; the loss's head (a
classifier, CMF rows) starts fresh."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ncstudy import tracking
from ncstudy.runlog import MODEL_DIR, MODEL_FILE
from ncstudy.targets import RunTarget

RUNS_PREFIX = "runs:/"


def init_encoder(encoder: nn.Module, init_from: str, run: RunTarget | None) -> None:
    """Load the encoder weights `init_from` names into `encoder` (every key must match)."""
    state = encoder_state(read_state(init_from, run))
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"model.init_from: {init_from} does not fit this encoder (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}); use the same model.name, width, feature_dim and "
            "bottleneck as the run it comes from"
        )


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's entries: a whole network's `encoder.*` keys, or the state as it is."""
    if any(k.startswith("encoder.") for k in state):
        return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def read_state(init_from: str, run: RunTarget | None) -> dict[str, torch.Tensor]:
    """The state_dict of a file or of a run's `model/` artifact (tensors only, on the CPU)."""
    if not init_from.startswith(RUNS_PREFIX):
        path = Path(init_from).expanduser()
        if not path.is_file():
            raise ValueError(f"model.init_from: no file {path}; give a state_dict or runs:/<id>")
        return torch.load(path, map_location="cpu", weights_only=True)
    if run is None:
        raise ValueError(f"model.init_from: {init_from} needs the study's MLflow tracking store")
    run_id = init_from.removeprefix(RUNS_PREFIX).strip("/")
    # mlflow (~1 s to import): only for runs:/ initialisations
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            mlf = tracking.client(run.tracking_uri)
            folder = Path(mlf.download_artifacts(run_id, MODEL_DIR, tmp))
            return torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        except (OSError, MlflowException) as err:
            raise ValueError(
                f"model.init_from: run {run_id} has no readable {MODEL_DIR}/ artifact in "
                f"{run.tracking_uri} ({err}); only network trials that finished log one"
            ) from None
