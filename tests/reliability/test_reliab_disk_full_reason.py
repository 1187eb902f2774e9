"""How a full disk is recognised and what the driver keeps for it (issue 19, section 3): the
errors it arrives as (OSError ENOSPC, SQLite's message through MLflow, a Ray error's text with
the trial's traceback), nothing else, and the reserve file that is freed when it happens."""

from __future__ import annotations

import errno
from pathlib import Path

from ncstudy.diskfull import RESERVE_BYTES, Reserve, full_disk_reason


def test_full_disk_errors_are_recognised_and_others_are_not() -> None:
    enospc = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    assert full_disk_reason(enospc) == "[Errno 28] No space left on device: '/data/x'"
    try:
        try:
            raise enospc
        except OSError as inner:
            raise RuntimeError("while saving the checkpoint") from inner
    except RuntimeError as outer:
        assert full_disk_reason(outer) is not None  # found through the cause
    sqlite = Exception("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT ...]")
    assert full_disk_reason(sqlite) == "(sqlite3.OperationalError) database or disk is full"
    ray_text = "Failure # 1\nTraceback ...\n  File x\nOSError: [Errno 28] No space left on device\n"
    assert full_disk_reason(ray_text) == "OSError: [Errno 28] No space left on device"
    assert full_disk_reason(OSError(errno.EACCES, "Permission denied")) is None
    assert full_disk_reason(ValueError("batch too large")) is None
    assert full_disk_reason(None) is None


def test_the_reserve_holds_real_blocks_and_is_freed(tmp_path: Path) -> None:
    reserve = Reserve(tmp_path / "study")
    reserve.hold()
    assert reserve.path.stat().st_size == RESERVE_BYTES
    assert reserve.path.stat().st_blocks * 512 >= RESERVE_BYTES  # not a sparse file
    reserve.free()
    reserve.free()  # twice: nothing left to free
    assert not reserve.path.exists()
