"""Case 4, server-side stores: a grid study and an Optuna search on a two-node loopback Ray
cluster, logging to a real `mlflow server` whose backend store is a real PostgreSQL server and
whose artifacts are served from the shared path, with the Optuna studies in PostgreSQL too
(NCSTUDY_OPTUNA_STORAGE). No SQLite file is involved anywhere."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import optuna
import psycopg
import pytest
import yaml
from cluster_services import (
    PG_PASSWORD,
    cli,
    cli_env,
    run_cli,
    steps,
    study_yaml,
    trial_runs,
    wait_for,
)
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_grid_study_on_mlflow_server_and_postgres(
    ray_two_nodes, mlflow_server, postgres, shared_dir: Path, tmp_path: Path
) -> None:
    study = study_yaml(tmp_path, "pg-grid", train={"epochs": 3, "lr": 0.1})
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    storage = shared_dir / "pg-grid"
    done = run_cli(study, "--address", ray_two_nodes.address, "--storage-path", str(storage),
                   env=env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to a local store

    mlf = MlflowClient(mlflow_server.uri)
    runs = trial_runs(mlf, "pg-grid")
    assert sorted(r.info.run_name for r in runs) == ["ce-b64-s0", "normface-t0.1-b64-s0"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert steps(mlf, run.info.run_id, "epoch") == [1, 2, 3]
        # artifacts: proxied by the server (mlflow-artifacts:/...), stored on the shared path,
        # downloadable through the server by a client that has no access to that path
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        got = Path(mlf.download_artifacts(run.info.run_id, "trial.yaml", str(tmp_path)))
        assert yaml.safe_load(got.read_text())["key"] == run.info.run_name
        on_disk = list((shared_dir / "mlflow-artifacts").rglob(f"{run.info.run_id}/**/trial.yaml"))
        assert len(on_disk) == 1 and on_disk[0].read_text() == got.read_text()
    # the runs live in PostgreSQL: the server's backend tables hold them with their status
    with psycopg.connect(postgres.url("mlflow")) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT r.name, r.status FROM runs r JOIN experiments e "
            "ON r.experiment_id = e.experiment_id WHERE e.name = %s",
            ("pg-grid",),
        )
        rows = dict(cur.fetchall())
    assert rows == {"pg-grid": "FINISHED", "ce-b64-s0": "FINISHED",
                    "normface-t0.1-b64-s0": "FINISHED"}  # fmt: skip
    # checkpoints on the shared storage path
    assert list((storage / "pg-grid" / "tune").glob("*/checkpoint_*"))


def _optuna_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:
        return []


def test_search_on_postgres_resumes_the_same_optuna_study(
    ray_two_nodes, mlflow_server, optuna_url: str, shared_dir: Path, tmp_path: Path
) -> None:
    n_trials = 4
    study = study_yaml(
        tmp_path,
        "pg-search",
        losses=[{"name": "normface"}],
        train={"epochs": 6, "lr": 0.1},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
        search={
            "n_trials": n_trials, "sampler": "tpe", "seed": 1, "pruner": "none",
            "space": {"temperature": {"low": 0.05, "high": 1.0, "log": True}},
        },
    )  # fmt: skip
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server.uri, NCSTUDY_OPTUNA_STORAGE=optuna_url)
    args = ("--address", ray_two_nodes.address, "--storage-path", str(shared_dir / "pg-search"))
    name = "pg-search-normface"
    proc = subprocess.Popen(cli(study, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    try:
        finished = lambda: [t for t in _optuna_trials(optuna_url, name) if t.state.is_finished()]
        wait_for(lambda: len(finished()) >= 1, 300, "a finished Optuna trial", proc)
        study_id = optuna.storages.RDBStorage(optuna_url).get_study_id_from_name(name)
        proc.send_signal(signal.SIGTERM)  # `ray job stop`: ends like Ctrl-C
        first, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, first
    before = _optuna_trials(optuna_url, name)
    assert 1 <= sum(t.state.is_finished() for t in before) < n_trials, first

    resumed = run_cli(study, *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert PG_PASSWORD not in resumed.stdout + resumed.stderr  # URLs are shown with ***

    # the same Optuna study (same id in the same database), continued: all trials complete,
    # none repeated, the ones finished before the interruption kept as they were
    storage = optuna.storages.RDBStorage(optuna_url)
    assert storage.get_study_id_from_name(name) == study_id
    assert len(optuna.get_all_study_names(storage)) == 1
    after = _optuna_trials(optuna_url, name)
    complete = [t for t in after if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state) for t in after]
    for old in before:
        if old.state == optuna.trial.TrialState.COMPLETE:
            assert after[old.number].params == old.params
            assert after[old.number].value == old.value
    assert not (tmp_path / "runs" / "pg-search" / "optuna.db").exists()

    mlf = MlflowClient(mlflow_server.uri)
    runs = trial_runs(mlf, "pg-search")
    keys = {r.data.tags["ncstudy.trial_key"] for r in runs}
    # one FINISHED run per completed Optuna trial (its number ends the key), none left over
    assert keys == {f"{r.info.run_name}" for r in runs} and len(runs) == len(keys)
    by_number = {int(r.data.tags["ncstudy.trial_key"].rsplit("-o", 1)[1]): r for r in runs}
    complete_numbers = {t.number for t in complete}
    assert complete_numbers <= set(by_number)
    for number in complete_numbers:
        run = by_number[number]
        assert run.info.status == "FINISHED"
        assert steps(mlf, run.info.run_id, "epoch")[-1] == 6
    # a trial interrupted mid-way is re-run (Tune restore) in its own run; none stays RUNNING
    assert all(r.info.status != "RUNNING" for r in runs)
