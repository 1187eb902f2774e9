"""benchmarks/gpu_check.sh in its dry mode (CPU, tiny sizes): the script starts, the GPU-marked
tests run (on the CPU) and pass, and every measurement stage reaches the final table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ZIP = Path(os.environ.get("NCSTUDY_CIFAR10_ZIP", ROOT.parent / "shared/data/cifar10-jpeg.zip"))


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_stage() -> None:
    if not ZIP.is_file():
        pytest.skip(f"offline CIFAR-10 zip not found at {ZIP} (set NCSTUDY_CIFAR10_ZIP)")
    env = os.environ | {"PYTHON": sys.executable, "NCSTUDY_CIFAR10_ZIP": str(ZIP)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "DRY RUN on the CPU" in out
    for stage in ("throughput", "loaders", "metrics"):
        assert f"stage {stage}:" in out
    table = out[out.index("measurement") :]
    for row in (
        "GPU-marked tests passed (0 skipped)",
        "worker loop, ffcv loader",
        "worker loop, torchvision loader",
        "worker loop / bare loop (best loader)",
        "ffcv / torchvision",
        "metrics pass / inference pass",
    ):
        assert row in table, row


def test_gpu_check_rejects_unknown_arguments() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--fast"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr
