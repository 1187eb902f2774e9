"""Case 5: two studies at once on one Ray cluster and one MLflow server (PostgreSQL behind it),
with the same trial keys: no run lost, none mixed into the other study. Case 6: the study
driver (`python -m ncstudy.run`, not the cluster) is SIGKILLed mid-study; `--resume` finishes
the study and the runs the dead driver left RUNNING end FINISHED."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from cluster_services import cli, cli_env, run_cli, steps, study_yaml, trial_runs, wait_for
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
KEYS = ["ce-b64-s0", "normface-t0.1-b64-s0"]


def _parent(mlf: MlflowClient, name: str):
    exp = mlf.get_experiment_by_name(name)
    runs = mlf.search_runs([exp.experiment_id], "tags.`ncstudy.role` = 'study'")
    assert len(runs) == 1, runs
    return runs[0]


def test_two_studies_at_once(ray_two_nodes, mlflow_server, shared_dir: Path, tmp_path) -> None:
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    procs = {}
    for name in ("twin-a", "twin-b"):
        folder = tmp_path / name
        folder.mkdir()
        study = study_yaml(
            folder, name, train={"epochs": 4, "lr": 0.1},
            resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        )  # fmt: skip
        args = ("--address", ray_two_nodes.address, "--storage-path", str(shared_dir / "twins"))
        procs[name] = subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    outputs = {name: proc.communicate(timeout=600)[0] for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name]

    mlf = MlflowClient(mlflow_server.uri)
    parents = {name: _parent(mlf, name) for name in procs}
    a, b = parents["twin-a"].info, parents["twin-b"].info
    assert a.start_time < b.end_time and b.start_time < a.end_time  # they did run at once
    for name, parent in parents.items():
        runs = trial_runs(mlf, name)
        assert sorted(r.info.run_name for r in runs) == KEYS  # none lost, none duplicated
        for run in runs:
            assert run.info.status == "FINISHED"
            assert run.data.tags["study"] == name  # not a run of the other study
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.info.experiment_id == parent.info.experiment_id
            assert steps(mlf, run.info.run_id, "epoch") == [1, 2, 3, 4]
        assert parent.info.status == "FINISHED"


def test_killed_driver_resumes(ray_two_nodes, mlflow_server, shared_dir: Path, tmp_path) -> None:
    epochs = 8
    study = study_yaml(tmp_path, "killed-driver", train={"epochs": epochs, "lr": 0.1},
                       dataset={"name": "digits", "image_size": 16})  # fmt: skip
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    args = ("--address", ray_two_nodes.address, "--storage-path", str(shared_dir / "killed"))
    mlf = MlflowClient(mlflow_server.uri)

    def running_at_epoch_2() -> bool:
        if mlf.get_experiment_by_name("killed-driver") is None:
            return False
        runs = trial_runs(mlf, "killed-driver")
        return any(r.info.status == "RUNNING" and r.data.metrics.get("epoch", 0) >= 2 for r in runs)

    proc = subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:
        wait_for(running_at_epoch_2, 300, "a trial at epoch 2", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: no handler runs, nothing closes
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    left = [r for r in trial_runs(mlf, "killed-driver") if r.info.status == "RUNNING"]
    assert left, "the killed driver left no RUNNING run: nothing to prove"
    assert _parent(mlf, "killed-driver").info.status == "RUNNING"

    resumed = run_cli(study, *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = trial_runs(mlf, "killed-driver")
    assert sorted(r.info.run_name for r in runs) == KEYS  # continued, not duplicated
    by_id = {r.info.run_id: r for r in runs}
    for run in left:  # the runs it left RUNNING are the ones that finished now
        assert by_id[run.info.run_id].info.status == "FINISHED"
    for run in runs:
        assert run.info.status == "FINISHED"
        assert set(steps(mlf, run.info.run_id, "epoch")) == set(range(1, epochs + 1))
        assert "final/test_acc1" in run.data.metrics
    assert _parent(mlf, "killed-driver").info.status == "FINISHED"
