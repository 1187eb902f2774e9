"""Trusted input (issue 19, sections 3 and 5): a corrupt or foreign mlflow.db / optuna.db,
and a study folder another user could have written, are refused with exit 2 and a one-line
reason, before Ray starts, and nothing is written."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

from ncstudy.run import main

TINY = {
    "name": "st",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 1},
    "grid": {"batch_size": [64]},
}
SEARCH = {"search": {"sampler": "random", "n_trials": 2, "space": {"train.lr": [0.1, 0.2]}}}


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to show that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def refused(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str, **fields: object) -> str:
    """Run the study on the output folder tmp_path/runs; exit 2, nothing written, no traceback."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **fields}))
    out = tmp_path / "runs"
    before = snapshot(out)
    assert main([str(path), "--output", str(out), *args]) == 2
    assert snapshot(out) == before
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def foreign_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE inventory (item TEXT, count INTEGER)")
        con.execute("INSERT INTO inventory VALUES ('apples', 3)")
    con.close()


@pytest.mark.parametrize("resume", [False, True])
def test_corrupt_mlflow_db(tmp_path: Path, capsys: pytest.CaptureFixture, resume: bool) -> None:
    db = tmp_path / "runs" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(os.urandom(8192))
    err = refused(tmp_path, capsys, *(["--resume"] if resume else []))
    assert f"not an MLflow store: {db}" in err and "SQLite" in err


def test_foreign_sqlite_as_mlflow_db(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "runs" / "mlflow.db"
    foreign_db(db)
    err = refused(tmp_path, capsys)
    assert f"not an MLflow store: {db}" in err and "experiments" in err


def test_corrupt_and_foreign_optuna_db(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "runs" / "st" / "optuna.db"
    foreign_db(db)
    err = refused(tmp_path, capsys, **SEARCH)
    assert f"not an Optuna store: {db}" in err and "studies" in err
    db.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))  # a damaged header
    assert f"not an Optuna store: {db}" in refused(tmp_path, capsys, **SEARCH)


def test_real_stores_pass_the_check(tmp_path: Path) -> None:
    """The check recognises stores the real MLflow and Optuna created (and an empty file,
    which the store initializes), so it refuses only what is not one."""
    import optuna
    from mlflow.tracking import MlflowClient

    from ncstudy.trust import MLFLOW_TABLES, OPTUNA_TABLES, check_sqlite_store

    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    (tmp_path / "empty.db").write_bytes(b"")
    check_sqlite_store(tmp_path / "mlflow.db", "MLflow", MLFLOW_TABLES)
    check_sqlite_store(tmp_path / "optuna.db", "Optuna", OPTUNA_TABLES)
    check_sqlite_store(tmp_path / "empty.db", "MLflow", MLFLOW_TABLES)


def test_study_folder_writable_by_others(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study_dir = tmp_path / "runs" / "st"
    (study_dir / "tune").mkdir(parents=True)
    (study_dir / "tune" / "tuner.pkl").write_bytes(b"not unpickled")
    os.chmod(study_dir / "tune" / "tuner.pkl", 0o666)
    err = refused(tmp_path, capsys, "--resume")
    assert f"{study_dir / 'tune' / 'tuner.pkl'} is writable by other users" in err
    assert "chmod o-w" in err
    os.chmod(study_dir / "tune" / "tuner.pkl", 0o644)
    os.chmod(study_dir, 0o777)
    err = refused(tmp_path, capsys, "--resume")
    assert f"{study_dir} is writable by other users" in err


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_study_folder_of_another_user(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study_dir = tmp_path / "runs" / "st"
    study_dir.mkdir(parents=True)
    os.chown(study_dir, 65534, 65534)  # nobody
    err = refused(tmp_path, capsys, "--resume")
    assert f"{study_dir} belongs to another user (uid 65534" in err
