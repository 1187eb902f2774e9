"""A disk that fills up mid-study (issue 19, section 3), for real: the study's output folder is a
small tmpfs mounted in a private mount namespace (`unshare -rm`, or `unshare -m` as root), so
nothing outside the test sees it. Once the trial has checkpoints, a filler file takes the rest
of the space. The driver must stop like Ctrl-C: exit 75 with one line naming the full disk and
the resume command (no traceback), runs KILLED (the parent not left RUNNING). Once the filler is
gone, `--resume` finishes the study from the newest checkpoint, each MLflow step logged once.

The scenario runs as this file's `__main__` inside the namespace; the test checks its exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EPOCHS = 30
STUDY = {
    "name": "full",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": EPOCHS},
    "grid": {"batch_size": [256]},
}
MOUNT = 'mount -t tmpfs -o size=128m tmpfs "$0" && exec "$@"'


def _namespace(where: Path) -> list[str] | None:
    """The unshare command that can mount a tmpfs here, or None."""
    if shutil.which("unshare") is None:
        return None
    for command in (["unshare", "-rm"], ["unshare", "-m"]):
        probe = [*command, "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {where}"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return command
    return None


def test_a_full_disk_stops_the_study_and_resume_finishes_it(tmp_path: Path) -> None:
    root = tmp_path / "disk"
    root.mkdir()
    unshare = _namespace(root)
    if unshare is None:
        pytest.skip("cannot mount a tmpfs: no `unshare -rm` (user namespaces) and not root")
    done = subprocess.run(
        [*unshare, "sh", "-c", MOUNT, str(root), sys.executable, __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "scenario passed" in done.stdout


def newest_epoch(root: Path) -> int:
    """The highest epoch of a checkpoint under `root` that loads."""
    import torch  # the scenario process only

    best = 0
    for path in root.rglob("checkpoint_*/state.pt"):
        try:
            best = max(best, int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]))
        except Exception:  # noqa: BLE001 - a partial or vanished file is no checkpoint
            continue
    return best


def fill(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\1" * 2**20)
                f.flush()
        except OSError:
            pass


def scenario(tmp: Path) -> None:
    """Run, fill the disk, check the stop, free it, resume, check the end (asserts)."""
    import yaml  # the scenario process only
    from mlflow.tracking import MlflowClient  # the scenario process only

    disk = tmp / "disk"
    runs = disk / "runs"
    path = disk / "full.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "output_dir": str(runs)}))
    command = [sys.executable, "-m", "ncstudy.run", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp / "first.out").open("w")  # outside the small disk
    driver = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 400
    while newest_epoch(runs) < 2:
        assert driver.poll() is None, f"the study ended early: {driver.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.1)
    fill(disk / "filler")
    stderr = driver.communicate(timeout=300)[1]
    assert driver.returncode == 75, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith("stopped: a disk is full ("), lines[-1]
    assert lines[-1].endswith(f"resume with  python -m ncstudy.run {path} --resume"), lines[-1]
    mlf = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = mlf.get_experiment_by_name("full")
    assert sorted(r.info.status for r in mlf.search_runs([exp.experiment_id])) == ["KILLED"] * 2
    (disk / "filler").unlink()
    stopped_at = newest_epoch(runs)
    assert stopped_at < EPOCHS
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    runs_now = mlf.search_runs([exp.experiment_id])
    assert sorted(r.info.status for r in runs_now) == ["FINISHED"] * 2
    (child,) = [r for r in runs_now if r.data.tags.get("ncstudy.role") == "trial"]
    assert child.data.tags["ncstudy.resumed_from"].startswith(f"epoch {stopped_at}: ")
    for run in runs_now:
        for key in run.data.metrics:
            steps = Counter(m.step for m in mlf.get_metric_history(run.info.run_id, key))
            assert max(steps.values()) == 1, (key, steps)
    print("scenario passed")


if __name__ == "__main__":
    scenario(Path(sys.argv[1]))
