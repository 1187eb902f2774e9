"""ncstudy's worker loop inside a one-rank NCCL process group, without Ray: every collective
the loop makes (metrics statistics, pass sums, the clock's gather, the feature-dimension
agreement) on the CUDA device through NCCL. A 1-GPU Ray Train trial (test_gpu_training.py)
takes the same paths, but needs Ray, which a bare CUDA image may not have; this one does not.
In the dry run the group is gloo on the CPU, and the loop must log what it logs without a
group (to round-off)."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist

from ncstudy.config import expand, parse_study
from ncstudy.context import LocalContext

pytestmark = pytest.mark.gpu


def _study(out: str, device: torch.device) -> dict:
    """Digits, 2 epochs, NC metrics and a clock pass every 10 iterations."""
    return {
        "name": "gpu-group",
        "output_dir": out,
        "dataset": {"name": "digits", "image_size": 16},
        "model": {"name": "small_cnn", "width": 16, "feature_dim": 32},
        "train": {"epochs": 2, "lr": 0.1, "amp": device.type == "cuda"},
        "losses": [{"name": "normface"}],
        "grid": {"batch_size": [64], "temperature": [0.1]},
        "evaluation": {
            "every": 1,
            "nc_metrics": True,
            "convergence": {"every_steps": 10, "subset_size": 200},
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(tmp_path, device: torch.device, backend: str | None, monkeypatch) -> list[dict]:
    """What the loop logs to MLflow, step by step, inside a one-rank group of `backend` (None:
    no group); no MLflow here (a bare CUDA image may lack it): RunLogger.log is recorded."""
    from ncstudy.runlog import RunLogger
    from ncstudy.train import train_loop

    logged: list[dict] = []
    monkeypatch.setattr(RunLogger, "log", lambda self, m, step: logged.append({**m, "@": step}))
    trial = expand(parse_study(_study(str(tmp_path), device)))[0]
    if backend is None:
        train_loop(trial, LocalContext())
        return logged
    extra = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1, **extra
    )
    try:
        assert dist.get_backend() == backend
        train_loop(trial, LocalContext())
        return logged
    finally:
        dist.destroy_process_group()


def test_worker_loop_in_a_one_rank_process_group(
    tmp_path, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        pytest.fail("this CUDA build of torch has no NCCL")
    grouped = _train(tmp_path / "group", device, backend, monkeypatch)
    alone = _train(tmp_path / "alone", device, None, monkeypatch)
    last = [r for r in grouped if "val/acc1" in r][-1]
    assert last["val/acc1"] > 0.5  # 10 classes: chance is 0.1
    for prefix in ("nc/", "clock/"):  # the metrics passes and the clock ran in the group
        values = [v for r in grouped for k, v in r.items() if k.startswith(prefix)]
        assert values and all(math.isfinite(v) for v in values if isinstance(v, float)), prefix
    keys = [sorted(r) for r in grouped]
    assert keys == [sorted(r) for r in alone]  # the same reports, metric for metric
    for g, a in zip(grouped, alone, strict=True):
        for k, v in g.items():
            if isinstance(v, float) and not k.startswith("perf/") and math.isfinite(v):
                if device.type == "cpu":  # training is the same; the statistics are
                    # re-centred on the reduced class means in a group (round-off only)
                    assert v == pytest.approx(a[k], rel=1e-12, abs=1e-12), k
                else:  # cuDNN's kernel choice may differ between the two runs
                    assert v == pytest.approx(a[k], rel=5e-2, abs=5e-2), k
