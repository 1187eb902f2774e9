"""`model.init_from`: start a trial's encoder from trained weights (fine-tuning, e.g. Jiang et
al.'s CMF fine-tuning): a state_dict file, `runs:/<run_id>`, the MLflow model (`model/`) a
finished trial logged to this study's MLflow store, or `torchvision:<WeightsEnum>`, torchvision's
pretrained weights (ncstudy/pretrained.py). Only the encoder is taken; the loss's head
(a classifier, CMF rows) starts fresh."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ncstudy.pretrained import PREFIX as TORCHVISION_PREFIX
from ncstudy.pretrained import torchvision_encoder_state
from ncstudy.targets import RunTarget
from ncstudy.trained import load_trial_model

RUNS_PREFIX = "runs:/"


def init_encoder(encoder: nn.Module, init_from: str, run: RunTarget | None) -> None:
    """Load the encoder weights `init_from` names into `encoder` (every key must match)."""
    if init_from.startswith(TORCHVISION_PREFIX):  # torchvision's pretrained weights
        state = torchvision_encoder_state(init_from, encoder)
    else:
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
    try:
        net, _ = load_trial_model(run_id, run.tracking_uri)
    except ValueError as err:
        raise ValueError(f"model.init_from: {err}") from None
    return {k: v.detach().cpu() for k, v in net.encoder.state_dict().items()}
