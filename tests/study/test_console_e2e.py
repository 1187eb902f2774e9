"""The console as a user sees it, through the real command: a piped run prints ncstudy's own
lines only (no escape codes, none of Ray's, Tune's or MLflow's noise, a failed trial's reason in
the summary) and ends with the MLflow link; a run on a terminal shows the live display; the
hint printed after Ctrl-C resumes the study as given; --dry-run names a missing data folder."""

from __future__ import annotations

import os
import pty
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[")
NOISE = (
    "Token authentication",  # Ray's notice at ray.init
    "INFO mlflow",  # MLflow's database migrations
    "Configuration for experiment",  # Tune's config box
    "tensorboard",  # Tune's TensorBoard hint
    "View detailed results here",
    "Checkpoint successfully created",  # Ray Train, from the workers
    "(run_trial pid=",  # any worker line forwarded to the driver
)
TINY = {
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "evaluation": {"every": 1, "nc_metrics": False},
}
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "", "TERM": "xterm"}


def write_study(tmp_path: Path, name: str, **fields: object) -> Path:
    study = {"name": name, **TINY, "output_dir": str(tmp_path / "runs"), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ncstudy.run", *args]


def test_a_piped_run_prints_ncstudy_s_lines_and_ends_with_the_mlflow_link(
    tmp_path: Path,
) -> None:
    """Batch size 1 fails (BatchNorm cannot train on one sample): its reason reaches the
    summary while the noise stays off."""
    path = write_study(
        tmp_path,
        "piped",
        train={"epochs": 2, "lr": 0.1},
        grid={"batch_size": [1, 64]},
        resources={"trial_max_failures": 0},
    )
    done = subprocess.run(
        command(str(path)), capture_output=True, text=True, env=ENV, timeout=600, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out  # one trial failed
    assert not ANSI.search(out), out
    for noise in NOISE:
        assert noise not in out, (noise, out)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("study 'piped': 2 trials -> ")
    assert any(line.startswith("  ce-b64-s0: epoch 2/2  loss ") for line in lines)
    assert any(line.startswith("  ce-b1-s0: failed") for line in lines)
    assert any(line.startswith("  ce-b64-s0: done  [") for line in lines)
    assert "ce-b1-s0: FAILED: " in done.stdout and "Expected more than 1 value" in done.stdout
    db = tmp_path / "runs" / "mlflow.db"
    assert lines[-2] == (
        f"browse the runs:  mlflow ui --backend-store-uri sqlite:///{db} "
        "--host 127.0.0.1 --port 5000"
    )
    link = "  then open  http://127.0.0.1:5000/#/experiments/"
    assert lines[-1].startswith(link) and lines[-1].endswith("/runs?workflowType=machine_learning")


def run_on_a_terminal(args: list[str], timeout: float) -> tuple[int, str]:
    """Run `args` with stdout and stderr on a pseudo-terminal; its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env={**ENV, "COLUMNS": "120"}
    )
    os.close(slave)
    out = bytearray()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer closed it
            break
        if not data:
            break
        out.extend(data)
    os.close(master)
    return proc.wait(timeout=60), out.decode(errors="replace")


def test_a_run_on_a_terminal_shows_the_live_display(tmp_path: Path) -> None:
    path = write_study(tmp_path, "live", train={"epochs": 3, "lr": 0.1}, grid={"batch_size": [64]})
    code, out = run_on_a_terminal(command(str(path)), timeout=600)
    assert code == 0, out
    assert ANSI.search(out)  # rich draws and redraws the display
    assert "trials: 0 done, 1 running, 0 pending, 0 failed of 1" in out
    assert "running trial" in out and "3/3" in out and "val acc1" in out
    assert "ce-b64-s0: done  [1 done, 0 running, 0 pending, 0 failed of 1]" in out
    for noise in NOISE:
        assert noise not in out, (noise, out)
    visible = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)  # a colour reset may follow it
    *_, browse, link = visible.rstrip().splitlines()
    assert browse.startswith("browse the runs:  mlflow ui") and "then open  http://" in link


def test_the_hint_after_ctrl_c_resumes_the_study(tmp_path: Path) -> None:
    """Run with --output elsewhere than the YAML's folder: the printed command must carry it,
    or --resume would find no study there."""
    path = write_study(tmp_path, "hint", train={"epochs": 30, "lr": 0.1}, grid={"batch_size": [64]})
    output = tmp_path / "elsewhere"
    proc = subprocess.Popen(
        command(str(path), "--output", str(output)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "epoch 3/30" in line:
            break
    assert proc.poll() is None, "".join(seen)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    hint = next(line for line in out.splitlines() if "resume with" in line)
    words = shlex.split(hint.split("resume with", 1)[1])
    assert words[:3] == ["python", "-m", "ncstudy.run"] and "--output" in words
    resumed = subprocess.run(
        [sys.executable, *words[1:]], capture_output=True, text=True, env=ENV, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    mlf = MlflowClient(f"sqlite:///{output / 'mlflow.db'}")
    runs = mlf.search_runs([mlf.get_experiment_by_name("hint").experiment_id])
    trials = [r for r in runs if r.data.tags.get("ncstudy.role") == "trial"]
    assert [(r.info.run_name, r.info.status) for r in trials] == [("ce-b64-s0", "FINISHED")]
    assert trials[0].data.metrics["epoch"] == 30
    assert not (tmp_path / "runs").exists()  # the YAML's own folder was never used


def test_dry_run_names_a_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cifar"
    path = write_study(tmp_path, "dry", dataset={"name": "cifar10", "root": str(missing)})
    done = subprocess.run(
        command(str(path), "--dry-run"), capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "1 trials" in done.stdout  # the table came first
    assert f"dataset.root (cifar10): {missing}/cifar-10-batches-py/ not found" in done.stderr
    assert not (tmp_path / "runs").exists()
