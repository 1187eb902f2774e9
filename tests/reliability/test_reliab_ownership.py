"""One owner per study (issue 19, section 1): two processes competing for one study's lock
(one wins, the other is refused naming it), a SIGKILLed owner whose study `--resume`
continues with no hand work, and the MLflow lease (live refusal, stale takeover, a PID gone on
this host, two writers at once) on a real SQLite store with a fake clock."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from ncstudy import ownership, tracking
from ncstudy.ownership import HEARTBEAT_TAG, OWNER_TAG, Lease, LocalLock, Owner
from ncstudy.paths import StudyError

HOST = socket.gethostname()


# ------------------------------------------------------------------ the local lock file


def _compete(study_dir: str, start: Any, results: Any, done: Any) -> None:
    """One contender: take the lock when every contender is ready; hold it until `done`."""
    lock = LocalLock(Path(study_dir))
    start.wait()
    try:
        lock.acquire()
    except StudyError as err:
        results.put(("refused", os.getpid(), str(err)))
        return
    results.put(("won", os.getpid(), ""))
    done.wait(30)
    lock.release()


def test_two_processes_one_lock_one_wins_and_the_other_names_it(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start, done, results = ctx.Barrier(2), ctx.Event(), ctx.Queue()
    study_dir = str(tmp_path / "runs" / "s")
    procs = [ctx.Process(target=_compete, args=(study_dir, start, results, done)) for _ in (0, 1)]
    for p in procs:
        p.start()
    got = sorted([results.get(timeout=30), results.get(timeout=30)])
    done.set()
    for p in procs:
        p.join(30)
    (refused, _, message), (won, winner, _) = got
    assert (refused, won) == ("refused", "won")
    assert f"host {HOST}, PID {winner}, started " in message
    assert "is being run by another driver" in message and "--resume" in message
    # the winner released: the lock is free and its file names no one
    lock = LocalLock(Path(study_dir))
    lock.acquire()
    lock.release()


def test_a_lock_that_made_the_folder_removes_it_when_nothing_else_was_written(
    tmp_path: Path,
) -> None:
    study_dir = tmp_path / "runs" / "s"
    lock = LocalLock(study_dir)
    lock.acquire()
    assert (study_dir / ownership.LOCK_FILE).read_text().startswith(f"host {HOST}, PID ")
    lock.release()
    assert not study_dir.exists()  # a refused study leaves nothing behind
    lock.acquire()
    (study_dir / "study.yaml").write_text("name: s\n")
    lock.release()
    assert (study_dir / ownership.LOCK_FILE).read_text() == ""  # kept, naming no one


# ------------------------------------------------------------------ the lease, fake clock


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables made (the slow part), copied by each test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def parent(tmp_path: Path, empty_store: Path) -> tuple[Any, str]:
    """A real SQLite MLflow store with a study's experiment and parent run."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    mlf = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = tracking.ensure_experiment(mlf, "s", tmp_path / "mlartifacts")
    return mlf, tracking.ensure_parent_run(mlf, experiment_id, "s", "name: s\n")


def lease(parent: tuple[Any, str], clock: Clock, owner: Owner, **kw: Any) -> Lease:
    mlf, run_id = parent
    return Lease(mlf, run_id, Path("/x/s"), clock=clock, me=owner, **kw)


def test_a_live_lease_refuses_a_stale_one_is_taken_over(parent: tuple[Any, str]) -> None:
    clock = Clock()
    a = lease(parent, clock, Owner("node-a", 4242, "tokena"))
    a.acquire()
    try:
        tags = parent[0].get_run(parent[1]).data.tags
        assert tags[OWNER_TAG] == "node-a:4242:tokena"
        assert float(tags[HEARTBEAT_TAG]) == clock.now  # the parent run shows the heartbeat
        clock.now += 89  # under 3 heartbeats of 30 s: alive
        b = lease(parent, clock, Owner("node-b", 7, "tokenb"))
        with pytest.raises(StudyError, match="host node-a, PID 4242 \\(last heartbeat 89 s ago"):
            b.acquire()
        assert a.refresh()  # a's heartbeat: alive again for 90 s
        clock.now += 60
        with pytest.raises(StudyError, match="last heartbeat 60 s ago"):
            b.acquire()
        clock.now += 31  # 91 s since a's last heartbeat: stale
        b.acquire()
        assert parent[0].get_run(parent[1]).data.tags[OWNER_TAG] == "node-b:7:tokenb"
        assert not a.refresh()  # a learns it lost the lease, and writes nothing
        assert float(parent[0].get_run(parent[1]).data.tags[HEARTBEAT_TAG]) == clock.now
    finally:
        a.release()
    assert parent[0].get_run(parent[1]).data.tags[OWNER_TAG] == "node-b:7:tokenb"  # a's release
    b.release()
    tags = parent[0].get_run(parent[1]).data.tags
    assert OWNER_TAG not in tags and float(tags[HEARTBEAT_TAG]) == clock.now


def test_an_owner_whose_pid_is_gone_on_this_host_is_taken_over_at_once(
    parent: tuple[Any, str],
) -> None:
    clock = Clock()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a = lease(parent, clock, Owner(HOST, dead.pid, "tokena"))
    a.acquire()
    a._stop.set()  # its process "died": no more heartbeats (the fresh one stays)
    b = lease(parent, clock, Owner(HOST, os.getpid(), "tokenb"))
    b.acquire()  # the heartbeat is 0 s old, but PID dead.pid is gone on this host
    assert parent[0].get_run(parent[1]).data.tags[OWNER_TAG] == f"{HOST}:{os.getpid()}:tokenb"
    b.release()
    live = lease(parent, clock, Owner(HOST, os.getppid(), "tokenc"))  # a live PID here
    live.acquire()
    try:
        with pytest.raises(StudyError, match=f"PID {os.getppid()}"):
            lease(parent, clock, Owner(HOST, os.getpid(), "tokend")).acquire()
    finally:
        live.release()


def test_two_writers_at_once_the_last_one_owns_the_lease(parent: tuple[Any, str]) -> None:
    """On a shared store both drivers may find the lease free; each writes, waits, reads it
    back: only the last writer keeps it."""
    clock = Clock()
    late = lease(parent, clock, Owner("node-b", 7, "tokenb"))

    def meanwhile(seconds: float) -> None:  # b writes while a waits
        late._write(owner_too=True)

    early = lease(parent, clock, Owner("node-a", 1, "tokena"), settle_s=2.0, sleep=meanwhile)
    with pytest.raises(StudyError, match="host node-b, PID 7"):
        early.acquire()
    assert parent[0].get_run(parent[1]).data.tags[OWNER_TAG] == "node-b:7:tokenb"


# ------------------------------------------------ a SIGKILLed owner, then --resume


OWNER_SCRIPT = """
import sys, time
import ray
from ncstudy import study as st
from ncstudy.config import load_study

ray.is_initialized = lambda: True  # no Ray: the driver's checks see a 2-CPU machine
ray.cluster_resources = lambda: {"CPU": 2.0}
ray.nodes = lambda: [{"Alive": True}]

def run_grid(run, trials):
    print("OWNING", flush=True)
    time.sleep(600)

st._run_grid = run_grid
st.run_study(load_study(sys.argv[1]))
"""


def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "own.yaml"
    raw = {
        "name": "own",
        "output_dir": str(tmp_path / "runs"),
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64], "seed": [0]},
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_resume_is_refused_while_the_owner_lives_and_needs_no_hand_work_after_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ncstudy import study as st
    from ncstudy.config import load_study

    for var in ("MLFLOW_TRACKING_URI", "NCSTUDY_STORAGE_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    path = study_file(tmp_path)
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OWNER_SCRIPT), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "OWNING"
        monkeypatch.setattr(st, "_start_ray", lambda *a: None)
        monkeypatch.setattr(st, "_check_cluster", lambda *a, **k: 1)
        study = load_study(path)
        with pytest.raises(StudyError, match=f"host {HOST}, PID {owner.pid}, started "):
            st.run_study(study, resume=True)
        with pytest.raises(StudyError, match="already exists"):  # without --resume: as before
            st.run_study(study)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
    mlf = tracking.client(tracking.default_tracking_uri(tmp_path / "runs"))
    run = tracking.find_study_run(tracking.default_tracking_uri(tmp_path / "runs"), "own")
    assert run is not None and run[2].info.status == "RUNNING"  # what SIGKILL leaves
    assert run[2].data.tags[OWNER_TAG].startswith(f"{HOST}:{owner.pid}:")

    ran = []
    monkeypatch.setattr(st, "_run_grid", lambda r, trials: ran.append(r) or False)
    st.run_study(study, resume=True)  # no lock file to remove, no tag to clear
    assert len(ran) == 1
    parent = mlf.get_run(run[2].info.run_id)
    assert parent.info.status == "FINISHED" and OWNER_TAG not in parent.data.tags


# ------------------------------------- drivers on two hosts creating one study at once


class Late:
    """An MLflow client that answers its first lookups as if another driver had not yet
    created the study's experiment / parent run (they exist already)."""

    def __init__(self, mlf: Any, misses: int = 1) -> None:
        self.mlf, self.misses = mlf, misses

    def __getattr__(self, name: str) -> Any:
        return getattr(self.mlf, name)

    def get_experiment_by_name(self, name: str) -> Any:
        if self.misses > 0:
            self.misses -= 1
            return None
        return self.mlf.get_experiment_by_name(name)

    def search_runs(self, *args: Any, **kw: Any) -> Any:
        if self.misses > 0:
            self.misses -= 1
            return []
        return self.mlf.search_runs(*args, **kw)


def test_two_drivers_creating_one_study_end_with_one_experiment_and_one_parent_run(
    tmp_path: Path, parent: tuple[Any, str]
) -> None:
    mlf, first = parent
    experiment_id = mlf.get_run(first).info.experiment_id
    # the experiment exists, but this driver looked before the other one made it
    assert tracking.ensure_experiment(Late(mlf), "s", tmp_path / "mlartifacts") == experiment_id
    # likewise the parent run: this driver makes a second one, sees two, keeps the older
    assert tracking.ensure_parent_run(Late(mlf), experiment_id, "s", "name: s\n") == first
    active = tracking.find_runs(mlf, experiment_id, tracking.ROLE_TAG, "study")
    assert [r.info.run_id for r in active] == [first]
