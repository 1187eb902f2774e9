"""MLflow's system-metrics monitor as a trial runs it (RunLogger.system_metrics): NVML's bindings
(nvidia-ml-py, the `gpu` extra) import at the pinned version, so MLflow's GPU monitor is not
skipped for want of them; the monitor starts and logs `system/...` to the trial's run; on a
machine with a CUDA device it logs the GPU's utilisation and memory too."""

from __future__ import annotations

import re
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ncstudy.runlog import RunLogger
from ncstudy.targets import RunTarget

ROOT = Path(__file__).resolve().parents[2]


def test_nvml_bindings_import_at_the_pinned_version() -> None:
    # the import MLflow's GPU monitor makes (mlflow/system_metrics/metrics/gpu_monitor.py)
    import pynvml  # noqa: F401 - the dependency under test, imported as MLflow does

    pin = re.search(r'"nvidia-ml-py==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin is not None, "pyproject.toml pins nvidia-ml-py in an extra"
    assert version("nvidia-ml-py") == pin.group(1)


def test_mlflows_gpu_monitor_finds_the_bindings() -> None:
    # mlflow's GPU monitor module imports pynvml at its top, or logs "not installed" and skips
    from mlflow.system_metrics.metrics import gpu_monitor  # noqa: E402 - the module under test

    assert hasattr(gpu_monitor, "pynvml")


def test_monitor_starts_and_logs_system_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MlflowClient(uri)
    run_id = mlf.create_run(mlf.create_experiment("sys")).info.run_id
    log = RunLogger(RunTarget(run_id=run_id, tracking_uri=uri), is_main=True)
    with log.system_metrics(True):
        time.sleep(0.8)
    keys = set(mlf.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys
    if torch.cuda.is_available():  # NVML sees the device: utilisation and memory per GPU
        gpu = {"system/gpu_0_utilization_percentage", "system/gpu_0_memory_usage_megabytes"}
        assert gpu <= keys
