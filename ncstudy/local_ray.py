"""The settings of a local Ray (no cluster address): every listener on the loopback interface.

Ray's gRPC servers (GCS, raylet, object manager, core workers, dashboard agent), its
runtime-env agent and its Prometheus metrics endpoint listen on all interfaces unless the
node's IP address is a loopback address; the dashboard follows `dashboard_host`. Ray 2.60
replaces a requested `_node_ip_address` of 127.0.0.1 by the machine's routable address
unless "clusters" are disabled (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by
`ray._private.services.get_node_ip_address`), so both are set. The local Ray then serves this
machine only: no other node can join it, which a local study never needs. Its processes end
with the driver, even after a SIGKILL (ncstudy/reaper.py).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from ncstudy import reaper

LOOPBACK = "127.0.0.1"
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray._private.ray_constants
# logs, at each new local Ray, that token authentication is on (Ray's default, which we keep)
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def local_ray_kwargs(verbose: bool = False) -> dict[str, Any]:
    """ray.init keyword arguments for a local Ray that listens on 127.0.0.1 only; sets the
    environment its processes inherit and starts the watcher that ends them with this process
    (ncstudy/reaper.py). Without `verbose`, Ray's notice that token authentication is on (its
    default, kept) is not printed. Call right before ray.init."""
    reaper.start()
    logging.getLogger(AUTH_NOTICE_LOGGER).setLevel(logging.WARNING if verbose else logging.ERROR)
    os.environ[CLUSTER_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:  # Ray imported already: the constant was read at import
        constants.ENABLE_RAY_CLUSTER = False
    return {
        "num_cpus": os.cpu_count() or 1,
        "_node_ip_address": LOOPBACK,
        "dashboard_host": LOOPBACK,  # never listen beyond this machine
        "logging_level": "warning",
        "configure_logging": True,
    }
