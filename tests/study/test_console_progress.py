"""ncstudy's console: the progress display's counts and ETA (against a hand computation), its
plain lines when piped, the live view on a terminal, the resume command and the dry run's
pre-flight checks (exit 2 naming what would fail)."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from ncstudy import progress
from ncstudy.progress import StudyProgress, duration, planned_epochs, quiet_libraries, tune_output
from ncstudy.run import build_parser, main, resume_command

ANSI = re.compile(r"\x1b\[")
TRIAL = {"train": {"epochs": 4}}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_eta_and_plain_lines() -> None:
    """3 trials of 4 epochs, one failed: after 2 epochs in 10 s (5 s an epoch) with 2 + 4
    epochs left the ETA is 30 s; only evaluation epochs and ends print a line."""
    out, clock = io.StringIO(), Clock()
    with StudyProgress(3, 4, stream=out, clock=clock) as shown:
        assert progress.current() is shown
        assert shown.eta() is None  # no epoch finished yet
        shown.started("a", TRIAL)
        shown.started("b", TRIAL)
        assert shown.counts() == "0 done, 2 running, 1 pending, 0 failed of 3"
        clock.now = 110.0
        shown.result("a", 1, "loss 2.0000", evaluated=False)
        shown.result("a", 2, "loss 1.5000  val acc1 50.00 %", evaluated=True)
        shown.ended("b", failed=True)  # never reported an epoch
        # left: a 2 epochs, the pending trial 4; pace 10 s / 2 epochs
        assert shown.eta() == pytest.approx(6 * 10 / 2)
        shown.started("a", TRIAL)  # a retry after a failure keeps its epoch
        assert shown.running["a"].epoch == 2
        shown.result("a", 4, "loss 1.0000", evaluated=False)  # restored: 2 epochs at once
        assert shown.epochs_done == 4
        shown.ended("a", failed=False)
    assert progress.current() is None
    text = out.getvalue()
    assert not ANSI.search(text)
    assert text.splitlines() == [
        "  a: epoch 2/4  loss 1.5000  val acc1 50.00 %",
        "  b: failed (the reason follows in the summary)  "
        "[0 done, 1 running, 1 pending, 1 failed of 3; ETA 30s]",
        "  a: done  [1 done, 0 running, 1 pending, 1 failed of 3; ETA 10s]",
    ]


def test_resumed_trials_count_as_done() -> None:
    with StudyProgress(5, 2, stream=io.StringIO()) as shown:
        shown.skip(3)
        assert shown.counts() == "3 done, 0 running, 2 pending, 0 failed of 5"


def test_live_view_on_a_terminal_shows_running_trials() -> None:
    out = io.StringIO()
    with StudyProgress(2, 4, stream=out, live=True) as shown:
        shown.started("ce-b64-s0", TRIAL)
        shown.result("ce-b64-s0", 3, "loss 0.5000", evaluated=True)
        shown.ended("ce-b64-s0", failed=False)
    text = out.getvalue()
    assert ANSI.search(text)  # rich's cursor control
    assert "trials: 0 done, 1 running, 1 pending, 0 failed of 2" in text
    assert "3/4" in text and "loss 0.5000" in text
    assert "ce-b64-s0: done  [1 done, 0 running, 1 pending, 0 failed of 2" in text


def test_small_helpers() -> None:
    assert [duration(s) for s in (None, 4.4, 65, 7260)] == ["-", "4s", "1m05s", "2h01m"]
    assert planned_epochs({"train": {"epochs": 15}, "ufm": None}) == 15
    assert planned_epochs({"train": {"epochs": 15}, "ufm": {"iterations": 300}}) == 300


def test_tune_output_switches_to_the_silent_reporter_and_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    with tune_output(verbose=False):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    with tune_output(verbose=True):
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ


def test_quiet_tune_turns_off_the_snapshot_warning_ray_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's experiment-state manager reads the threshold when built (inside the fit): 0 inside
    the quiet block, Ray's 5 s with --verbose, and a user's own value is kept."""
    # Ray's private manager: the object whose warning the console would show
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    name = "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"

    def threshold() -> float:
        manager = _ExperimentCheckpointManager(storage=None, checkpoint_period="auto")
        return manager._excessive_sync_threshold

    monkeypatch.delenv(name, raising=False)
    with tune_output(verbose=False):
        assert threshold() == 0.0
    assert name not in os.environ
    with tune_output(verbose=True):
        assert threshold() == 5.0
    monkeypatch.setenv(name, "2")
    with tune_output(verbose=False):
        assert threshold() == 2.0
    assert os.environ[name] == "2"


def test_a_failed_trial_s_tune_error_becomes_one_plain_line() -> None:
    """What Ray's RayTaskError prints: a coloured task name, a traceback, the cause last."""
    logger = logging.getLogger(progress.TUNE_CONTROLLER_LOGGER)
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    error = RuntimeError(
        "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1)\n  File x, line 1\nValueError: bad batch"
    )
    try:
        with tune_output(verbose=False):
            logger.error("Trial task failed for trial %s", "ce-b1-s0", exc_info=error)
        logger.error("Trial task failed for trial %s", "ce-b2-s0", exc_info=error)  # filter gone
    finally:
        logger.removeHandler(handler)
    assert seen[0].getMessage() == "Trial task failed for trial ce-b1-s0: ValueError: bad batch"
    assert seen[0].exc_info is None
    assert seen[1].exc_info is not None  # --verbose and outside a run: Tune's own record


def test_quiet_libraries_keeps_a_level_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in progress.QUIET_LOGGERS:  # restored after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "error")
    quiet_libraries(verbose=False)
    assert logging.getLogger("mlflow").level == logging.ERROR
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    quiet_libraries(verbose=False)
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert logging.getLogger("alembic").level == logging.WARNING


def test_resume_command_keeps_where_the_study_runs() -> None:
    where = ["--output", "/o", "--address", "ray://h:10001", "--storage-path", "s3://b"]
    args = build_parser().parse_args(["my study.yaml", *where])
    assert resume_command(args) == (
        "python -m ncstudy.run 'my study.yaml' --resume --output /o --address ray://h:10001 "
        "--storage-path s3://b"
    )
    plain = build_parser().parse_args(["s.yaml", "--resume"])
    assert resume_command(plain) == "python -m ncstudy.run s.yaml --resume"


def write_study(tmp_path: Path, **fields: object) -> Path:
    study = {
        "name": "preflight",
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64]},
        "output_dir": str(tmp_path / "runs"),
        **fields,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_dry_run_refuses_a_trial_that_does_not_fit_this_machine(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = (os.cpu_count() or 1) + 1
    path = write_study(tmp_path, resources={"cpus_per_worker": cpus})
    assert main([str(path), "--dry-run"]) == 2
    out = capsys.readouterr()
    assert "1 trials" in out.out  # the table still prints
    assert f"one trial needs {{'CPU': {float(cpus)}}}" in out.err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_dry_run_passes_a_study_that_could_start(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main([str(write_study(tmp_path)), "--dry-run"]) == 0
    assert "pre-flight checks passed" in capsys.readouterr().out


def test_dry_run_checks_the_free_disk_space(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    full = shutil.disk_usage(tmp_path)._replace(free=0)
    monkeypatch.setattr("ncstudy.diskspace.shutil.disk_usage", lambda at: full)
    assert main([str(write_study(tmp_path)), "--dry-run"]) == 2
    assert "not enough free space for study 'preflight'" in capsys.readouterr().err
