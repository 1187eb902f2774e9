"""What ncstudy trusts, checked before a study starts: the study folder (`--resume`
unpickles Ray Tune's `tune/tuner.pkl` from it) must belong to this user and not be writable by
others, and the local stores (`mlflow.db`, `optuna.db`) must be the SQLite databases they claim
to be. Reads only; writes nothing (README, "Reliability and trust")."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from ncstudy.paths import StudyError

if TYPE_CHECKING:
    from ncstudy.config import StudySpec
    from ncstudy.paths import StudyPaths

# tables every store of that kind has (MLflow 3 and Optuna 5 create many more)
MLFLOW_TABLES = frozenset({"experiments", "runs", "metrics", "params", "tags", "alembic_version"})
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})


def check_study_inputs(study: StudySpec, paths: StudyPaths) -> None:
    """Refuse (StudyError) a study folder another user could have written, and a local
    MLflow or Optuna store that is not one."""
    check_owned(paths.study_dir)
    mlflow_db = sqlite_path(paths.tracking_uri)
    if mlflow_db is not None:
        check_sqlite_store(mlflow_db, "MLflow", MLFLOW_TABLES)
    if study.search is not None:
        from ncstudy.search import optuna_storage_url  # optuna and Ray: only for searches

        optuna_db = sqlite_path(optuna_storage_url(paths.study_dir))
        if optuna_db is not None:
            check_sqlite_store(optuna_db, "Optuna", OPTUNA_TABLES)


def check_owned(study_dir: Path) -> None:
    """The study folder, its `tune/` folder and `tune/tuner.pkl` (unpickled by --resume),
    where they exist, belong to this user and are not writable by other users."""
    uid = os.getuid()
    for path in (study_dir, study_dir / "tune", study_dir / "tune" / "tuner.pkl"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != uid:
            raise StudyError(
                f"{path} belongs to another user (uid {st.st_uid}, you are {uid}); a study "
                "folder is trusted input (--resume unpickles tune/tuner.pkl): use your own "
                "output folder, or copy the study after checking it"
            )
        if st.st_mode & stat.S_IWOTH:
            raise StudyError(
                f"{path} is writable by other users; a study folder is trusted input (--resume "
                f"unpickles tune/tuner.pkl): fix it with  chmod o-w {path}  (or use another folder)"
            )


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///` URL (MLflow and SQLAlchemy style), else None."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def check_sqlite_store(path: Path, kind: str, tables: frozenset[str]) -> None:
    """An existing store file is a SQLite database with `kind`'s tables, or an empty one
    (which the store initializes). Opened read-only: nothing is written."""
    if not path.exists():
        return
    refuse = f"not an {kind} store: {path}"  # MLflow, Optuna
    if not path.is_file():
        raise StudyError(f"{refuse} (not a file); move it aside or set another output folder")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise StudyError(
            f"{refuse} (SQLite: {err}); move it aside or set another output folder"
        ) from None
    missing = sorted(tables - found)
    if found and missing:
        raise StudyError(
            f"{refuse} (a SQLite database without the tables {', '.join(missing)}); move it "
            "aside or set another output folder"
        )
