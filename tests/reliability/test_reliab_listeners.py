"""Local mode listens on the loopback interface only (issue 19, section 5): a real study runs
through `python -m ncstudy.run` while this test lists the listening sockets of the driver's
process tree (Ray's GCS, raylet, agents, dashboard, workers) and fails on any other address.
Before: 7 gRPC listeners on all interfaces and 3 metrics endpoints on 0.0.0.0."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

STUDY = {
    "name": "lo",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 2},
    "grid": {"batch_size": [64]},
}


def listeners(root: psutil.Process) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of root and its
    descendants."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for proc in procs:
        try:
            name = proc.name()
            conns = proc.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                found.add((c.laddr.ip, c.laddr.port, name))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def test_a_local_study_listens_on_loopback_only(tmp_path: Path) -> None:
    path = tmp_path / "lo.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(tmp_path / "runs")}))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ncstudy.run", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    driver = psutil.Process(proc.pid)
    seen: set[tuple[str, int, str]] = set()
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners(driver)
        time.sleep(0.5)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    processes = {name for _, _, name in seen}
    # Ray really ran and was observed: its servers and the trial's worker listened
    assert any("gcs_server" in n for n in processes), seen
    assert any("raylet" in n for n in processes), seen
    assert len(seen) >= 6, seen
    exposed = sorted(s for s in seen if not is_loopback(s[0]))
    assert not exposed, f"listening beyond this machine: {exposed}"
