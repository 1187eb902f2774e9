"""Real trials end to end: 2 DDP workers on the offline CIFAR-10 copy, a Ray Train worker killed
mid-trial (the trial resumes from its last checkpoint and ends with every epoch), and the FFCV
loader feeding the real worker loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training and 10 test images per class of the offline CIFAR-10 JPEG copy."""
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    root = tmp_path_factory.mktemp("cifar")
    return extract_imagefolder_zip(shared_cifar10_zip(), root, {"train": 30, "test": 10})


def start(tmp_path: Path, study: dict) -> subprocess.Popen:
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump({**study, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "ncstudy.run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def child_runs(tmp_path: Path, name: str) -> tuple[MlflowClient, list]:
    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name(name)
    runs = mlf.search_runs([exp.experiment_id]) if exp else []
    return mlf, [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]


def test_two_workers_train_on_the_offline_cifar10_copy(tmp_path: Path, cifar_root: Path) -> None:
    proc = start(
        tmp_path,
        {
            "name": "cifar2w",
            "dataset": {"name": "cifar10_jpeg", "root": str(cifar_root), "val_fraction": 0.2},
            "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
            "train": {"epochs": 4, "lr": 0.4, "warmup_epochs": 1},
            "losses": [{"name": "normface"}],
            "grid": {"temperature": [0.1], "batch_size": [32]},
            "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.5},
            "evaluation": {"every": 2},
        },
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    mlf, (run,) = child_runs(tmp_path, "cifar2w")
    assert run.info.status == "FINISHED" and run.data.params["resources.workers_per_trial"] == "2"
    losses = [
        m.value
        for m in sorted(mlf.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    ]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "nc/nc1" in run.data.metrics and run.data.metrics["final/val_acc1"] > 0.1


def train_worker_pids(driver: int) -> list[int]:
    """The Ray Train workers of this test's study: descendants of its driver process (its local
    Ray). The machine may run other Ray clusters; their workers are not this test's to kill."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    parent, workers = {}, []
    for line in out.splitlines():
        pid, ppid, *args = line.split(None, 2)
        parent[int(pid)] = int(ppid)
        if args and "RayTrainWorker" in args[0]:
            workers.append(int(pid))

    def descends(pid: int) -> bool:
        while pid not in (0, 1, driver) and pid in parent:
            pid = parent[pid]
        return pid == driver

    return [pid for pid in workers if descends(pid)]


def test_a_killed_worker_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    epochs = 30
    proc = start(
        tmp_path,
        {
            "name": "kill",
            "dataset": {"name": "digits", "image_size": 8},
            "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
            "train": {"epochs": epochs, "lr": 0.1},
            "losses": [{"name": "ce"}],
            "grid": {"batch_size": [64]},
            "resources": {"workers_per_trial": 2, "cpus_per_worker": 0.5, "max_failures": 2},
            "evaluation": {"every": 3, "nc_metrics": False},
        },
    )
    killed_at = None
    deadline = time.time() + 300
    while killed_at is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        if not (tmp_path / "runs" / "kill" / "train").exists():
            continue  # the driver has not created the MLflow store yet
        _, runs = child_runs(tmp_path, "kill")
        epoch = runs[0].data.metrics.get("epoch", 0) if runs else 0
        pids = train_worker_pids(proc.pid)
        if 7 <= epoch < epochs - 5 and pids:
            os.kill(pids[-1], signal.SIGKILL)
            killed_at = epoch
    assert killed_at is not None, "could not kill a worker mid-trial"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out

    mlf, (run,) = child_runs(tmp_path, "kill")
    assert run.info.status == "FINISHED" and run.data.metrics["epoch"] == epochs
    history = mlf.get_metric_history(run.info.run_id, "train/loss")
    # every epoch once: the re-run epochs after the restart are not logged again (issue 19 §2)
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    # resumed from a checkpoint (a multiple of 3, at most one evaluation before the kill or a
    # little after it: MLflow's epoch lags the worker), not from scratch
    resumed = run.data.tags.get("ncstudy.resumed_from", "")
    assert resumed.startswith("epoch "), "no restart: the worker kill did not take effect"
    restored = int(resumed.split()[1].rstrip(":"))
    assert restored % 3 == 0 and killed_at - 3 <= restored < epochs


def test_ffcv_loader_feeds_the_worker_loop(tmp_path: Path, cifar_root: Path) -> None:
    pytest.importorskip("ffcv")
    from data_prep.write_beton import main as write_beton
    from ncstudy.config import expand, parse_study
    from ncstudy.context import LocalContext
    from ncstudy.train import train_loop

    betons = tmp_path / "betons"
    write_beton(["--dataset", "cifar10_jpeg", "--root", str(cifar_root), "--out", str(betons)])
    study = {
        "name": "ffcv",
        "dataset": {
            "name": "cifar10_jpeg",
            "root": str(cifar_root),
            "loader": "ffcv",
            "beton_dir": str(betons),
            "val_fraction": 0.2,
        },
        "model": {"name": "small_cnn", "width": 8, "feature_dim": 16},
        "train": {"epochs": 3, "lr": 0.4},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [32]},
        "evaluation": {"every": 3, "nc_metrics": False},
    }
    ctx = LocalContext()
    train_loop(expand(parse_study(study))[0], ctx)
    losses = [r["train/loss"] for r in ctx.reports]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert ctx.reports[-1]["status"] == "finished"
