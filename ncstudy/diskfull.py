"""A full disk mid-study stops the study like Ctrl-C (issue 19, section 3): the runs end KILLED,
Tune's state stays resumable, and the driver exits with one line saying what filled up and how
to go on. A trial that hits it raises (no FAILED run, no retry that would fail the same way);
the driver's Tune callback sees the error and interrupts Tune as SIGINT does. The driver keeps
a small reserve file in the study folder and deletes it when the disk fills, so that closing
the runs and saving Tune's state can still write.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path
from typing import Any

# How a full disk reads in an error: OSError's own text, SQLite's (MLflow), quota's.
MARKERS = ("No space left on device", "database or disk is full", "Disk quota exceeded")
RESERVE_FILE = ".ncstudy-reserve"
RESERVE_BYTES = 4 * 2**20
EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure; the user is invited to retry (--resume)


class DiskFull(Exception):
    """The study stopped because a disk filled up; `reason` names what failed to write."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def full_disk_reason(err: BaseException | str | None) -> str | None:
    """The line of `err` (an exception, its chain, or an error text) that says a disk is full,
    or None where it says no such thing."""
    seen: set[int] = set()
    while isinstance(err, BaseException) and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(err)[:300]
        found = full_disk_reason(str(err))
        if found is not None:
            return found
        err = err.__cause__ or err.__context__
    if isinstance(err, str):
        lines = [line.strip() for line in err.splitlines() if any(m in line for m in MARKERS)]
        return lines[-1][:300] if lines else None
    return None


class Reserve:
    """A file of RESERVE_BYTES in the study folder, freed when the disk fills up."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / RESERVE_FILE

    def hold(self) -> None:
        """Write the reserve (real blocks, not a sparse file); a full disk already: none."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            self.free()

    def free(self) -> None:
        """Give the reserved space back."""
        self.path.unlink(missing_ok=True)


def stop_callback(reserve: Reserve) -> Any:
    """A Tune callback that, when a trial fails on a full disk, frees the reserve and stops
    the Tune run as Ctrl-C does (SIGINT to this driver: Tune saves its state, the unfinished
    trials stay resumable). The reason is kept in `stopped`."""
    from ray import tune  # ray: only where a study runs

    class StopOnDiskFull(tune.Callback):
        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            # this module as imported in the driver: Tune pickles its callbacks with the
            # Tuner, and a restored copy's globals would be copies too
            from ncstudy import diskfull

            reason = diskfull.full_disk_reason(diskfull.error_text(trial))
            if reason is not None and not diskfull.STOPPED:
                diskfull.STOPPED.append(reason)
                reserve.free()
                os.kill(os.getpid(), signal.SIGINT)

        on_trial_recover = on_trial_error  # a trial about to be retried: the same stop

    return StopOnDiskFull()


def error_text(trial: Any) -> str:
    """The error Tune recorded for a trial: its local error file (written before the
    callbacks run), else the copy in storage."""
    try:
        return Path(trial.error_file).read_text()
    except (OSError, TypeError, AttributeError):
        err = trial.get_error()
        return "" if err is None else str(err)


# Why the running study stopped on a full disk (one entry), for the driver's exit.
STOPPED: list[str] = []
