"""End to end through the real command: Ray Tune + Train, MLflow runs checked through the MLflow
client, failing trials (an exception, a NaN loss), and SIGTERM + --resume without duplicated or
missing runs."""

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

pytestmark = pytest.mark.slow

TINY = {
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "grid": {"temperature": [0.1], "batch_size": [64]},
}


def write_study(tmp_path: Path, **fields: object) -> Path:
    study = {**TINY, "output_dir": str(tmp_path / "runs"), **fields}
    path = tmp_path / f"{study['name']}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def cli(*args: str, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "ncstudy.run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        **kw,
    )


def runs_of(tmp_path: Path, study: str) -> tuple[object, list, list]:
    mlf = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name(study)
    runs = mlf.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ncstudy.role") == "study"]
    children = [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]
    return mlf, parents, children


def test_two_worker_trials_are_logged_as_nested_mlflow_runs(tmp_path: Path) -> None:
    path = write_study(
        tmp_path,
        name="e2e",
        train={"epochs": 2, "lr": 0.1},
        losses=[{"name": "ce"}, {"name": "normface"}],
        resources={"workers_per_trial": 2, "cpus_per_worker": 0.5},
        evaluation={"every": 1},
    )
    proc = cli(str(path))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "ce-b64-s0" in out and "FINISHED" in out and "mlflow ui --backend-store-uri" in out

    mlf, parents, children = runs_of(tmp_path, "e2e")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["ce-b64-s0", "normface-t0.1-b64-s0"]
    for run in children:
        assert run.info.status == "FINISHED"
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["batch_size"] == "64" and tags["seed"] == "0" and tags["dataset"] == "digits"
        assert len(tags["config_hash"]) == 12 and "git_commit" in tags
        assert params["resources.workers_per_trial"] == "2" and params["loss"] == tags["loss"]
        history = mlf.get_metric_history(run.info.run_id, "val/acc1")
        assert sorted(m.step for m in history) == [1, 2]
        assert {"train/loss", "nc/nc1", "nc/erank_inter", "final/val_acc1"} <= set(run.data.metrics)
        assert [a.path for a in mlf.list_artifacts(run.info.run_id)] == ["trial.yaml"]
        # the network is the run's MLflow model `model` (a logged model, stored beside the
        # run's artifacts in MLflow 3), written by rank 0 of the two workers
        (logged,) = mlf.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert logged.name == "model"
    normface = next(r for r in children if r.info.run_name.startswith("normface"))
    assert normface.data.tags["temperature"] == "0.1"


def test_stop_then_resume_finishes_every_trial_once(tmp_path: Path) -> None:
    """Trials that raise (batch size 1: BatchNorm cannot train on one sample) and one whose
    loss becomes NaN end FAILED with their reasons while the study goes on; SIGTERM (what
    `ray job stop` and Kubernetes send) stops it like Ctrl-C: runs KILLED, exit 143; --resume
    reruns the errored trials, continues the interrupted one from its checkpoint and starts the
    one never started, without a duplicated or missing run."""
    path = write_study(
        tmp_path,
        name="resume",
        train={"epochs": 40, "lr": 0.1},
        losses=[{"name": "ce"}],
        grid={"batch_size": [1, 64], "axes": {"train.lr": [1.0e9, 0.1, 0.2]}},
        resources={"max_concurrent_trials": 1, "trial_max_failures": 0},
        evaluation={"every": 5, "nc_metrics": False},
    )
    raising = ["ce-b1-lr1e+09-s0", "ce-b1-lr0.1-s0", "ce-b1-lr0.2-s0"]
    nan, interrupted, fresh = "ce-b64-lr1e+09-s0", "ce-b64-lr0.1-s0", "ce-b64-lr0.2-s0"
    proc = cli(str(path))
    deadline = time.time() + 300
    # stop once the failing trials have ended and the interrupted one has logged a few epochs
    while time.time() < deadline:
        time.sleep(2)
        # the Tune folder appears after the driver has created the MLflow store: opening the
        # store earlier would race the driver's schema creation
        if (tmp_path / "runs" / "resume" / "tune").exists() and proc.poll() is None:
            mlf, _, children = runs_of(tmp_path, "resume")
            second = [r for r in children if r.info.run_name == interrupted]
            if second and second[0].data.metrics.get("epoch", 0) >= 10:
                break
    assert proc.poll() is None, "the study ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert "--resume" in out

    mlf, parents, children = runs_of(tmp_path, "resume")
    assert parents[0].info.status == "KILLED"
    status = {r.info.run_name: r.info.status for r in children}
    assert status == {**dict.fromkeys(raising, "FAILED"), nan: "FAILED", interrupted: "KILLED"}
    reason = {r.info.run_name: r.data.tags.get("ncstudy.failure_reason", "") for r in children}
    assert "training loss is" in reason[nan]
    for key in raising:
        assert "Expected more than 1 value per channel when training" in reason[key], key

    proc = cli(str(path), "--resume")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out  # some trials failed, the others finished

    mlf, parents, children = runs_of(tmp_path, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == sorted([*raising, nan, interrupted, fresh])
    status = {r.info.run_name: r.info.status for r in children}
    assert status == {
        **dict.fromkeys(raising, "FAILED"),
        nan: "FAILED",
        interrupted: "FINISHED",
        fresh: "FINISHED",
    }
    for r in children:
        if r.info.run_name in raising:  # rerun by --resume, failed again with its reason
            assert "Expected more than 1 value" in r.data.tags["ncstudy.failure_reason"]
    for key in (interrupted, fresh):
        run = next(r for r in children if r.info.run_name == key)
        steps = {m.step for m in mlf.get_metric_history(run.info.run_id, "val/acc1")}
        assert steps == set(range(1, 41)), key  # nothing missing after resume
        assert run.data.metrics["epoch"] == 40
