"""The device of the GPU-marked tests: CUDA when present; the CPU only in the GPU check's dry
mode (NCSTUDY_GPU_DRY=1, a smoke run proving the tests start); otherwise they skip."""

from __future__ import annotations

import os

import pytest
import torch


def gpu_device() -> torch.device:
    """cuda:0, or the CPU in dry mode; skips the test when neither applies."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if os.environ.get("NCSTUDY_GPU_DRY") == "1":
        return torch.device("cpu")
    pytest.skip("needs a CUDA device (benchmarks/gpu_check.sh; NCSTUDY_GPU_DRY=1 runs on CPU)")


@pytest.fixture
def device() -> torch.device:
    return gpu_device()


@pytest.fixture
def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype of the device: float16 on CUDA (GradScaler), bfloat16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16
