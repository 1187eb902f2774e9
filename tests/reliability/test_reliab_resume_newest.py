"""Resume from the newest checkpoint, every MLflow step once (issue 19, section 2). One real
study through `python -m ncstudy.run` meets three faults in turn: its trial's worker process
gets SIGKILL (Tune retries the trial), the driver gets SIGKILL (then `--resume`), the resumed
driver gets SIGINT (then `--resume` to the end). After each, the trial must restart from the
newest checkpoint on disk (Tune's saved experiment state is made stale on purpose: it is saved
every 10 minutes here), and at the end every metric history of every run holds each step once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

EPOCHS = 40
STUDY = {
    "name": "resumed",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": EPOCHS},
    "grid": {"batch_size": [256]},
}


def newest_epoch(root: Path) -> int:
    """The highest epoch of a checkpoint under `root` that loads (independently of ncstudy's
    markers: a state file cut short does not load)."""
    best = 0
    for path in root.rglob("checkpoint_*/state.pt"):
        try:
            best = max(best, int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]))
        except Exception:  # noqa: BLE001 - a partial or vanished file is no checkpoint
            continue
    return best


def wait_for(what: str, done: Callable[[], bool], proc: subprocess.Popen, limit: float = 300):
    deadline = time.monotonic() + limit
    while not done():
        if proc.poll() is not None:
            out = getattr(proc, "output", None)
            tail = out.read_text()[-3000:] if out is not None else ""
            ended = f"the driver ended (exit {proc.returncode}) before: {what}"
            raise AssertionError(f"{ended}\n{tail}")
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.1)


def trial_process(driver: subprocess.Popen) -> psutil.Process | None:
    """The Tune trial's worker process (the single-worker fast path trains in it)."""
    for proc in psutil.Process(driver.pid).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def kill_driver(driver: subprocess.Popen) -> None:
    """SIGKILL the driver, then wait until its Ray processes are gone (ncstudy's reaper ends
    them, tests/reliability/test_reliab_sigkill_reaper.py): until then the orphaned trial may
    still train and write checkpoints, so the newest one is only known after."""
    family = psutil.Process(driver.pid).children(recursive=True)
    driver.kill()
    driver.wait(30)
    _, alive = psutil.wait_procs(family, timeout=150)
    for proc in alive:  # the reaper's own test fails for these; here they would only race
        proc.kill()
    psutil.wait_procs(alive, timeout=30)


class Study:
    """The study's files, its driver command and its MLflow record."""

    def __init__(self, tmp_path: Path) -> None:
        self.runs = tmp_path / "runs"
        path = tmp_path / "resumed.yaml"
        path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(self.runs)}))
        self.command = [sys.executable, "-m", "ncstudy.run", str(path)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
        self.env["TUNE_GLOBAL_CHECKPOINT_S"] = "600"  # Tune's saved state goes stale
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.started = 0
        self.mlf = MlflowClient(f"sqlite:///{self.runs / 'mlflow.db'}")

    def start(self, *flags: str) -> subprocess.Popen:
        """A driver, its output in a file (`.output`) for the failure message."""
        self.started += 1
        output = self.runs.parent / f"driver{self.started}.out"
        with output.open("w") as out:
            proc = subprocess.Popen(
                [*self.command, *flags], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        proc.output = output  # type: ignore[attr-defined]
        return proc

    def runs_of(self) -> list:
        exp = self.mlf.get_experiment_by_name(STUDY["name"])
        return [] if exp is None else self.mlf.search_runs([exp.experiment_id])

    def child(self):
        kids = [r for r in self.runs_of() if r.data.tags.get("ncstudy.role") == "trial"]
        return kids[0] if kids else None

    def resumed_from(self) -> str:
        child = self.child()
        return "" if child is None else child.data.tags.get("ncstudy.resumed_from", "")

    def trained_past(self, epoch: int) -> Callable[[], bool]:
        return lambda: newest_epoch(self.runs) >= epoch

    def restored(self, epoch: int) -> Callable[[], bool]:
        return lambda: self.resumed_from().startswith(f"epoch {epoch}: ")


def test_restarts_resume_from_the_newest_checkpoint_and_log_each_step_once(tmp_path: Path):
    study = Study(tmp_path)
    driver = study.start()
    # 1. a killed trial process: Tune retries the trial, which restores the newest checkpoint
    wait_for("a checkpoint of epoch 3", study.trained_past(3), driver)
    worker = trial_process(driver)
    assert worker is not None, "no Tune trial process under the driver"
    worker.kill()
    worker.wait(30)
    killed_at = newest_epoch(study.runs)
    wait_for(f"the retry restoring epoch {killed_at}", study.restored(killed_at), driver)
    # 2. SIGKILL of the driver: --resume restores the newest checkpoint, not Tune's saved one
    wait_for("two more epochs", study.trained_past(killed_at + 2), driver)
    kill_driver(driver)
    killed_at = newest_epoch(study.runs)
    driver = study.start("--resume")
    wait_for(f"--resume restoring epoch {killed_at}", study.restored(killed_at), driver)
    # 3. SIGINT: the runs end KILLED; --resume goes on from the newest checkpoint to the end
    wait_for("two more epochs", study.trained_past(killed_at + 2), driver)
    driver.send_signal(signal.SIGINT)
    assert driver.wait(60) == 130
    assert sorted(r.info.status for r in study.runs_of()) == ["KILLED", "KILLED"]
    stopped_at = newest_epoch(study.runs)
    assert stopped_at < EPOCHS, "the study ended before the test could interrupt it"
    done = subprocess.run(
        [*study.command, "--resume"], capture_output=True, text=True, env=study.env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert study.resumed_from().startswith(f"epoch {stopped_at}: ")
    assert sorted(r.info.status for r in study.runs_of()) == ["FINISHED", "FINISHED"]
    assert_each_step_once(study.mlf, study.runs_of())


def assert_each_step_once(mlf: MlflowClient, runs: list) -> None:
    """Every metric history of every run holds each step exactly once; the trial's training
    loss holds every epoch."""
    doubled = []
    for run in runs:
        for key in run.data.metrics:
            steps = Counter(m.step for m in mlf.get_metric_history(run.info.run_id, key))
            doubled += [f"{key}@{s} x{n}" for s, n in steps.items() if n > 1]
            if key == "train/loss":
                assert sorted(steps) == list(range(1, EPOCHS + 1))
    assert not doubled, doubled[:20]
