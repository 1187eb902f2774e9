"""Cluster mode: where to connect, whether results can be shared, how many trials fit.

Pure functions (no Ray calls) so that the runner can feed them ``ray.cluster_resources()``,
``len(ray.nodes())`` and the study YAML, and tests can feed them plain dicts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from ncstudy import tracking

# URI schemes of object stores that every node reaches through the same address.
SHARED_SCHEMES = frozenset({"s3", "gs", "gcs", "abfs", "abfss"})
# Environment variable that declares a local path to be on a shared filesystem (e.g. NFS).
SHARED_FS_ENV = "NCSTUDY_SHARED_FS"
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
# Ray's own convention: RAY_ADDRESS is read by ray.init() when no address is passed.
RAY_ADDRESS_ENV = "RAY_ADDRESS"
# Headroom for float resources (Ray stores fractional resources with 1e-4 granularity).
_EPS = 1e-6


def resolve_address(cli_address: str | None) -> str | None:
    """Return the Ray address to connect to: ``--address`` first, then ``RAY_ADDRESS``, else None.

    None means "start a local Ray instance"; blank values count as unset.
    """
    for candidate in (cli_address, os.environ.get(RAY_ADDRESS_ENV)):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return None


def _scheme(storage_path: str) -> str | None:
    """Return the lower-case URI scheme of ``storage_path``, or None for a plain path."""
    head, sep, _ = storage_path.partition("://")
    return head.lower() if sep else None


def _shared_fs_from_env() -> bool:
    """True when ``NCSTUDY_SHARED_FS`` declares local paths to be on a shared filesystem."""
    return os.environ.get(SHARED_FS_ENV, "").strip().lower() in _TRUE_WORDS


def check_storage_path(
    storage_path: str,
    node_count: int,
    shared_fs: bool | None = None,
    *,
    existing_cluster: bool = False,
) -> None:
    """Refuse a node-local ``storage_path`` where trials may run on other machines.

    Local mode (ncstudy started Ray itself, one node): any local folder. On an existing cluster
    (``existing_cluster``: ``--address`` / ``RAY_ADDRESS``) nodes come and go (an autoscaling
    cluster starts with the head alone), so the node count at start proves nothing: a shared
    location is required whatever ``node_count`` is. Shared: ``s3://``, ``gs://``, ``gcs://``,
    ``abfs(s)://`` URIs, and absolute local paths declared shared with ``shared_fs=True`` or
    ``NCSTUDY_SHARED_FS=1`` (an NFS mount at the same place on every node, or a one-machine
    cluster). ``shared_fs=None`` reads the environment variable.
    """
    if not storage_path or not storage_path.strip():
        raise ValueError(
            "storage_path is empty; pass --storage-path / NCSTUDY_STORAGE_PATH "
            "(a local folder on one machine, s3://bucket/prefix or gs://bucket/prefix on a cluster)"
        )
    if node_count < 1:
        raise ValueError(f"node_count must be >= 1 (got {node_count}); count the alive Ray nodes")
    scheme = _scheme(storage_path)
    if scheme is not None and scheme != "file":
        if scheme in SHARED_SCHEMES:
            return
        raise ValueError(
            f"storage_path '{storage_path}' uses the unsupported scheme '{scheme}://'; "
            f"use one of {', '.join(f'{s}://' for s in sorted(SHARED_SCHEMES))} or a local path"
        )
    if node_count == 1 and not existing_cluster:
        return
    if shared_fs is None:
        shared_fs = _shared_fs_from_env()
    local_path = storage_path[len("file://") :] if scheme == "file" else storage_path
    if shared_fs:
        if not os.path.isabs(local_path):
            raise ValueError(
                f"storage_path '{storage_path}' is declared shared ({SHARED_FS_ENV}) but is "
                "relative; each node resolves it against its own working directory: give the "
                "absolute mount point of the shared filesystem"
            )
        return
    where = (
        f"ncstudy is connected to an existing Ray cluster (now {node_count} node(s); an "
        "autoscaling cluster adds more, each with its own disk)"
        if existing_cluster
        else f"the Ray cluster has {node_count} nodes"
    )
    raise ValueError(
        f"storage_path '{storage_path}' is a local path but {where}; use a shared location: "
        "s3://bucket/prefix, gs://bucket/prefix, or a path on a shared filesystem mounted at the "
        "same place on every node (NFS) and pass --storage-path / NCSTUDY_STORAGE_PATH (for NFS, "
        f"or a cluster of this one machine, also set {SHARED_FS_ENV}=1)"
    )


def check_tracking_uri(tracking_uri: str, shared_fs: bool | None = None) -> None:
    """On an existing cluster, trial processes on other nodes log to the MLflow store: a local
    SQLite file is only reachable from every node if declared shared (``NCSTUDY_SHARED_FS=1``);
    otherwise an MLflow server (``MLFLOW_TRACKING_URI=http://...``) is needed."""
    if not tracking.is_local_store(tracking_uri):
        return
    if shared_fs is None:
        shared_fs = _shared_fs_from_env()
    if not shared_fs:
        raise ValueError(
            f"the MLflow store {tracking.shown_uri(tracking_uri)}"
            " is a local file, but ncstudy is connected to an "
            "existing Ray cluster whose trials may run on other nodes; set MLFLOW_TRACKING_URI to "
            f"an MLflow server (http://HOST:5000, see infra/README.md), or set {SHARED_FS_ENV}=1 "
            "if that file is on a filesystem every node mounts at the same place"
        )


# Resource names Ray manages itself (the study has fields for CPUs and GPUs).
_RESERVED_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


def check_custom_resources(custom: Mapping[str, Any]) -> dict[str, float]:
    """``resources.custom``: ``{name: amount}`` of custom Ray resources per worker. Names are
    Ray resource names other than CPU/GPU/memory; amounts positive and finite, and whole
    numbers above 1 (Ray refuses fractional amounts above 1)."""
    if not isinstance(custom, Mapping):
        raise ValueError(f"resources.custom must map resource names to amounts (got {custom!r})")
    out: dict[str, float] = {}
    for name, amount in custom.items():
        where = f"resources.custom.{name}"
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"resources.custom: resource name {name!r} must be a plain name")
        if name in _RESERVED_RESOURCES or name.startswith("node:"):
            raise ValueError(
                f"{where}: {name} is managed by Ray; use cpus_per_worker / gpus_per_worker "
                "for CPUs and GPUs, and custom names for anything else"
            )
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise ValueError(f"{where}: the amount must be a number (got {amount!r})")
        if not math.isfinite(amount) or amount <= 0:
            raise ValueError(f"{where}: the amount must be positive and finite (got {amount!r})")
        if amount > 1 and not float(amount).is_integer():
            raise ValueError(
                f"{where}: Ray takes fractional amounts only up to 1 (got {amount!r}); use a "
                "whole number or a fraction <= 1"
            )
        out[name] = float(amount)
    return out


def _number(per_trial: Mapping[str, Any], key: str, default: float, minimum: float) -> float:
    """Read a numeric field of ``per_trial`` and check its lower bound, naming the field."""
    value = per_trial.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"resources.{key} must be a number >= {minimum} (got {value!r})")
    return float(value)


def trial_demand(per_trial: Mapping[str, Any]) -> dict[str, float]:
    """Total resources one trial holds: its driver's CPUs plus workers x per-worker CPUs/GPUs.

    Keys of ``per_trial``: ``workers_per_trial`` (int >= 1), ``cpus_per_worker`` (default 1),
    ``gpus_per_worker`` (default 0), ``driver_cpus`` (the Tune trial's own share, default 1),
    ``custom`` (``{name: amount}`` custom Ray resources per worker, default none).
    """
    known = {"workers_per_trial", "cpus_per_worker", "gpus_per_worker", "driver_cpus", "custom"}
    unknown = sorted(set(per_trial) - known)
    if unknown:
        raise ValueError(f"unknown resources field(s) {unknown}; expected some of {sorted(known)}")
    workers = per_trial.get("workers_per_trial", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"resources.workers_per_trial must be an integer >= 1 (got {workers!r})")
    cpus = _number(per_trial, "cpus_per_worker", 1.0, 0.0)
    gpus = _number(per_trial, "gpus_per_worker", 0.0, 0.0)
    driver = _number(per_trial, "driver_cpus", 1.0, 0.0)
    custom = check_custom_resources(per_trial.get("custom", {}))
    return {
        "CPU": driver + workers * cpus,
        "GPU": workers * gpus,
        **{name: workers * amount for name, amount in custom.items()},
    }


def max_concurrent_trials(
    cluster_resources: Mapping[str, float],
    per_trial: Mapping[str, Any],
    requested: int | None,
    *,
    existing_cluster: bool = False,
) -> int:
    """Number of trials that may run at once.

    ``cluster_resources`` is ``ray.cluster_resources()`` (totals, not what is free now).
    Local mode: what fits the cluster, capped by ``requested``; nothing fitting is an error.
    An existing cluster (``existing_cluster``: ``--address`` / ``RAY_ADDRESS``) may add nodes
    when trials wait for them, so its current size is only a lower bound: ``requested`` (the
    YAML's ``max_concurrent_trials``) is used as given, trials beyond what fits wait for the
    autoscaler; without it, what fits now, and nothing fitting is an error asking for it.
    """
    if requested is not None and (
        isinstance(requested, bool) or not isinstance(requested, int) or requested < 1
    ):
        raise ValueError(f"max_concurrent_trials must be an integer >= 1 (got {requested!r})")
    demand = {name: amount for name, amount in trial_demand(per_trial).items() if amount > 0}
    if not demand:
        raise ValueError(
            "a trial demands no resources at all; set resources.cpus_per_worker or "
            "resources.gpus_per_worker above 0"
        )
    if existing_cluster and requested is not None:
        return requested
    fits = min(
        math.floor(float(cluster_resources.get(name, 0.0)) / amount + _EPS)
        for name, amount in demand.items()
    )
    if fits >= 1:
        return fits if requested is None else min(fits, requested)
    have = {name: float(cluster_resources.get(name, 0.0)) for name in demand}
    if existing_cluster:
        raise ValueError(
            f"one trial needs {demand} but the Ray cluster has {have} now; if it autoscales "
            "(GPU workers that start from zero), set resources.max_concurrent_trials in the "
            "study YAML (how many trials may run at once; the autoscaler adds nodes for them), "
            "else lower resources.workers_per_trial / cpus_per_worker / gpus_per_worker / "
            "custom or add nodes"
        )
    raise ValueError(
        f"one trial needs {demand} but this machine's Ray has {have}; lower "
        "resources.workers_per_trial / cpus_per_worker / gpus_per_worker / custom, or run on a "
        "cluster "
        "(--address)"
    )
