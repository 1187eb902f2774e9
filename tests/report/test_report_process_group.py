"""Headless Chromium is stopped as a process group: every helper process is gone before its
profile folder is removed (a renderer that outlived the main process wrote into the profile
and its removal failed, once in CI)."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from ncstudy.report.browser import stop_process_group


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("ignore_term", [False, True])
def test_the_leader_and_its_children_are_all_gone(ignore_term: bool) -> None:
    """A leader with two children (one ignoring SIGTERM in the second case: killed after the
    grace period)."""
    trap = "trap '' TERM; " if ignore_term else ""
    script = f"{trap}sleep 300 & sleep 300 & wait"
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    time.sleep(0.3)
    assert _alive(proc.pid)
    stop_process_group(proc, grace=5.0)
    assert not _alive(proc.pid)
    assert proc.returncode is not None  # the leader was reaped, no zombie left
