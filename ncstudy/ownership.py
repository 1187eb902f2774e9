"""One owner per study: a second driver of a running study is refused, naming the live owner,
and a dead owner's study is taken over by the next `--resume` without hand work (issue 19).

Two locks, both held for the driver's life:
- a lock file `study.lock` beside `study.yaml`, taken with `fcntl.flock` and holding the owner's
  host, PID and start time: the kernel releases it when the process dies (SIGKILL included), so
  it never goes stale on this host;
- a lease on the study's MLflow parent run, the tags `ncstudy.owner` (host:pid:token) and
  `ncstudy.heartbeat` (unix time, refreshed every HEARTBEAT_S by a daemon thread): drivers on
  other hosts that share an MLflow server or storage see it, and the parent run shows whether
  its driver lives. A lease is stale after STALE_AFTER heartbeats, or at once when its PID is
  gone on this host.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ncstudy.paths import MARKER, StudyError

LOCK_FILE = "study.lock"
OWNER_TAG = "ncstudy.owner"
HEARTBEAT_TAG = "ncstudy.heartbeat"
HEARTBEAT_S = 30.0
STALE_AFTER = 3  # heartbeats missed before a lease counts as abandoned
SETTLE_S = 2.0  # shared stores: wait, then read the lease back (the last writer wins)


@dataclass(frozen=True)
class Owner:
    """A driver process: its host, PID and a token that tells apart two lives of one PID."""

    host: str
    pid: int
    token: str

    @classmethod
    def me(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    @classmethod
    def parse(cls, text: str | None) -> Owner | None:
        """The owner a `host:pid:token` tag names, or None (absent or unreadable)."""
        parts = (text or "").rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    def gone(self) -> bool:
        """Whether this owner's process is known to be dead: its PID is gone on this host."""
        if self.host != socket.gethostname():
            return False  # another host's process: only its heartbeat tells
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def _refusal(study_dir: Path, who: str) -> StudyError:
    return StudyError(
        f"study {study_dir.name!r} is being run by another driver: {who}; wait for it to end, "
        "or stop it (Ctrl-C or kill PID on that host), then run with --resume"
    )


class LocalLock:
    """The lock file beside `study.yaml`: `fcntl.flock` on an open file, with the owner written
    into it for the refusal message."""

    def __init__(self, study_dir: Path) -> None:
        self.study_dir = study_dir
        self.path = study_dir / LOCK_FILE
        self._file: Any = None
        self._made_dir = False

    def acquire(self) -> None:
        """Take the lock or raise StudyError naming its holder."""
        self._made_dir = not self.study_dir.exists()
        self.study_dir.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")  # noqa: SIM115 - held open for the driver's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise _refusal(self.study_dir, self._holder()) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()}, PID {os.getpid()}, started {started}\n")
        f.flush()
        self._file = f

    def _holder(self) -> str:
        """What the lock file says of its holder (it writes right after taking the lock)."""
        for _ in range(20):
            text = self.path.read_text().strip() if self.path.exists() else ""
            if text:
                return text
            time.sleep(0.05)
        return f"a process holding {self.path} (it has not written its name yet)"

    def release(self) -> None:
        """Unlock; a folder this lock made and nothing else used is removed again."""
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        only_lock = self._made_dir and not (self.study_dir / MARKER).exists()
        if only_lock and [p.name for p in self.study_dir.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            self.study_dir.rmdir()
        self._file.close()  # closing releases the flock
        self._file = None


@dataclass
class Lease:
    """The owner's lease on the study's MLflow parent run, refreshed by a daemon thread."""

    mlf: Any
    run_id: str
    study_dir: Path
    settle_s: float = 0.0
    interval_s: float = HEARTBEAT_S
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    me: Owner = field(default_factory=Owner.me)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def holder(self) -> tuple[Owner | None, float | None]:
        """The owner the parent run names, and its last heartbeat (unix time)."""
        tags = self.mlf.get_run(self.run_id).data.tags
        beat = tags.get(HEARTBEAT_TAG)
        try:
            beat_at = float(beat) if beat is not None else None
        except ValueError:
            beat_at = None
        return Owner.parse(tags.get(OWNER_TAG)), beat_at

    def _live(self, owner: Owner | None, beat: float | None) -> bool:
        if owner is None or owner.token == self.me.token or owner.gone():
            return False
        return beat is not None and self.clock() - beat < STALE_AFTER * self.interval_s

    def _describe(self, owner: Owner, beat: float | None) -> str:
        age = "never" if beat is None else f"{self.clock() - beat:.0f} s ago"
        stale = STALE_AFTER * self.interval_s
        return (
            f"host {owner.host}, PID {owner.pid} (last heartbeat {age}; it counts as gone "
            f"{stale:.0f} s after its last heartbeat)"
        )

    def acquire(self) -> None:
        """Take the lease unless a live owner holds it (StudyError naming it); then keep it
        fresh from a daemon thread."""
        owner, beat = self.holder()
        if self._live(owner, beat):
            raise _refusal(self.study_dir, self._describe(owner, beat))  # type: ignore[arg-type]
        self._write(owner_too=True)
        if self.settle_s > 0:  # two drivers that wrote at once: the last writer owns it
            self.sleep(self.settle_s)
            owner, beat = self.holder()
            if owner != self.me:
                raise _refusal(self.study_dir, self._describe(owner, beat))  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._beat, name="ncstudy-lease", daemon=True)
        self._thread.start()

    def _write(self, owner_too: bool) -> None:
        from mlflow.entities import RunTag  # mlflow: already loaded by the driver's client

        now = self.clock()
        readable = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
        tags = [RunTag(HEARTBEAT_TAG, f"{now:.0f}"), RunTag(HEARTBEAT_TAG + "_utc", readable)]
        if owner_too:
            tags.append(RunTag(OWNER_TAG, str(self.me)))
        self.mlf.log_batch(self.run_id, tags=tags)

    def refresh(self) -> bool:
        """One heartbeat; False (and a warning) when another driver has taken the lease."""
        owner, _ = self.holder()
        if owner != self.me:
            print(
                f"warning: another driver ({owner}) took over study {self.study_dir.name!r}: "
                "this driver's heartbeats were late; stop this driver",
                file=sys.stderr,
                flush=True,
            )
            return False
        self._write(owner_too=False)
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.refresh():
                    return
            except Exception as err:  # noqa: BLE001 - a server blip: the next beat tries again
                print(f"warning: heartbeat not recorded ({err})", file=sys.stderr, flush=True)

    def release(self) -> None:
        """Stop the heartbeats and clear the owner tag (the last heartbeat stays). A store that
        does not answer now only delays the next driver until the lease is stale (warning)."""
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=10)
        self._thread = None
        try:
            owner, _ = self.holder()
            if owner == self.me:
                self.mlf.delete_tag(self.run_id, OWNER_TAG)
        except Exception as err:  # noqa: BLE001 - never hide the study's own outcome
            print(
                f"warning: the lease on study {self.study_dir.name!r} was not released ({err}); "
                f"the next driver may take it over {STALE_AFTER * self.interval_s:.0f} s after "
                "the last heartbeat",
                file=sys.stderr,
                flush=True,
            )
