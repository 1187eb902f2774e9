"""The services a study talks to, checked before anything is written: the Ray cluster at
``--address``, the MLflow server (or database) of ``MLFLOW_TRACKING_URI`` and the Optuna
database of ``NCSTUDY_OPTUNA_STORAGE``. An unreachable one is a StudyError (exit 2) that names
the setting, what answered, and the fix, instead of a traceback or minutes of client retries."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request

from ncstudy.paths import StudyError

TIMEOUT_S = 5.0  # one attempt each: a service that is up answers a loopback/LAN call at once
# URL schemes that name a database (SQLAlchemy dialects MLflow and Optuna accept), not a file.
DATABASE_SCHEMES = ("postgresql", "postgres", "mysql", "mssql")


def check_services(address: str | None, search: bool) -> None:
    """Check every service the study will use (the Optuna database only for a search)."""
    if address is not None:
        check_ray_address(address)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if tracking_uri:
        check_tracking_uri(tracking_uri)
    optuna_url = os.environ.get("NCSTUDY_OPTUNA_STORAGE", "").strip()
    if search and optuna_url:
        check_database(optuna_url, "NCSTUDY_OPTUNA_STORAGE")


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a Ray address (``HOST:PORT`` or ``ray://HOST:PORT``), None for
    ``auto`` / ``local`` (ray.init finds those itself)."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit():
        raise StudyError(
            f"--address {address!r}: expected HOST:PORT of the Ray head's GCS (e.g. "
            "127.0.0.1:6379), ray://HOST:10001, or auto"
        )
    return host.strip("[]"), int(port)


def check_ray_address(address: str, timeout: float = TIMEOUT_S) -> None:
    """Something must listen at the Ray address; ray.init would otherwise retry for a minute
    and end in a traceback."""
    target = _host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        raise StudyError(
            f"--address {address}: no Ray cluster answers at {target[0]}:{target[1]} ({err}); "
            "start the cluster (ray start --head, ray up, KubeRay) or fix --address / "
            "RAY_ADDRESS"
        ) from None


def check_tracking_uri(uri: str, timeout: float = TIMEOUT_S) -> None:
    """An MLflow server must answer its health check; a database store must accept a login."""
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme.split("+")[0] in DATABASE_SCHEMES:
        check_database(uri, "MLFLOW_TRACKING_URI")
        return
    if scheme not in ("http", "https"):
        return  # a local store (sqlite, file): created on demand, checked by cluster.py
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (http only)
            status = reply.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise StudyError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer ({reason}); start it "
            "(mlflow server ..., see infra/README.md) or point MLFLOW_TRACKING_URI at the "
            "running server"
        ) from None
    if status != 200:
        raise StudyError(
            f"MLFLOW_TRACKING_URI={uri}: {url} answered HTTP {status}, not an MLflow server's "
            "health check; point MLFLOW_TRACKING_URI at the MLflow server"
        )


def check_database(url: str, setting: str, timeout: float = TIMEOUT_S) -> None:
    """Log in to the database of ``url`` once (a wrong password, host or database name fails
    here, named, without showing the password). SQLite files are not checked."""
    # sqlalchemy: only when a database URL is checked
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StudyError(f"{setting}: not a database URL; e.g. postgresql://USER@HOST/DB") from None
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        return
    args = {"connect_timeout": int(timeout)} if parsed.get_backend_name() == "postgresql" else {}
    try:
        engine = create_engine(parsed, connect_args=args, poolclass=_null_pool())
        with engine.connect():
            pass
    except NoSuchModuleError as err:
        raise StudyError(f"{setting}={shown}: {err}; install ncstudy[cluster]") from None
    except (SQLAlchemyError, ImportError) as err:
        cause = getattr(err, "orig", None) or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        hint = (
            "install ncstudy[cluster] (the PostgreSQL driver)"
            if isinstance(err, ImportError)
            else "check the user, password, host, port and database name"
        )
        raise StudyError(f"{setting}={shown}: cannot connect ({first}); {hint}") from None


def _null_pool() -> type:
    """No connection pool: the check opens one connection and closes it."""
    from sqlalchemy.pool import NullPool  # sqlalchemy: only when a database URL is checked

    return NullPool
