"""ncstudy's own console output while a study runs: on a terminal a live display (rich) of the
trials done / running / pending / failed of N, each running trial's epoch and latest metric and
an ETA; piped, plain lines without escape codes. The Tune callback in tuning.py feeds the one
display that is open (`current()`): a callback restored from Tune's saved state finds it too.
Also the switches that keep Ray's and Tune's own output off the console unless --verbose.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

_CURRENT: StudyProgress | None = None
# Libraries whose INFO lines (MLflow's database migrations, alembic's) are not the user's business
QUIET_LOGGERS = ("mlflow", "alembic")
MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"  # mlflow/environment_variables.py
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"  # logs failed trials
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


def current() -> StudyProgress | None:
    """The display of the study running in this process, if any."""
    return _CURRENT


def planned_epochs(trial: dict[str, Any]) -> int:
    """How many epochs (UFM: iterations) a trial (its TrialSpec as JSON) runs."""
    ufm = trial.get("ufm")
    return int(ufm["iterations"]) if ufm else int(trial["train"]["epochs"])


def duration(seconds: float | None) -> str:
    """A short human duration: 45s, 3m05s, 2h10m; '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class _Running:
    epochs: int
    epoch: int = 0
    latest: str = ""


class StudyProgress:
    """The counts and per-trial state of a study's trials, shown live or as plain lines."""

    def __init__(
        self,
        total: int,
        epochs: int,
        *,
        stream: TextIO | None = None,
        live: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.epochs = total, epochs
        self.done = self.failed = self.epochs_done = 0
        self.running: dict[str, _Running] = {}
        self._clock = clock
        self._started: float | None = None  # when the first trial of this run started
        self._stream = stream or sys.stdout
        is_tty = self._stream.isatty() if live is None else live
        self._console = Console(file=self._stream, force_terminal=is_tty, highlight=False)
        self._live = (
            Live(console=self._console, refresh_per_second=2, transient=True) if is_tty else None
        )

    def __enter__(self) -> StudyProgress:
        global _CURRENT
        _CURRENT = self
        if self._live is not None:
            self._live.start()
            self._live.update(self._render(), refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        global _CURRENT
        _CURRENT = None
        if self._live is not None:
            self._live.stop()

    def skip(self, finished: int) -> None:
        """Trials finished by an earlier run of the study (--resume): counted done."""
        self.done += finished
        self._refresh()

    def started(self, key: str, trial: dict[str, Any]) -> None:
        """A trial (its TrialSpec as JSON) started (or restarted after a failure)."""
        if self._started is None:
            self._started = self._clock()
        self.running.setdefault(key, _Running(planned_epochs(trial)))
        self._refresh()

    def result(self, key: str, epoch: int, latest: str, evaluated: bool) -> None:
        """A trial reported `epoch`; `latest` describes its metrics. Piped, only evaluation
        epochs print a line."""
        state = self.running.get(key)
        if state is None:
            return
        self.epochs_done += max(1, epoch - state.epoch) if state.epoch else 1
        state.epoch, state.latest = epoch, latest
        if evaluated and self._live is None:
            self._line(f"  {key}: epoch {epoch}/{state.epochs}  {latest}")
        self._refresh()

    def ended(self, key: str, failed: bool) -> None:
        """A trial ended: finished, or failed (its reason is in the summary and MLflow)."""
        self.running.pop(key, None)
        if failed:
            self.failed += 1
        else:
            self.done += 1
        word = "failed (the reason follows in the summary)" if failed else "done"
        left = f"; ETA {duration(self.eta())}" if self.running or self.pending() else ""
        self._line(f"  {key}: {word}  [{self.counts()}{left}]")
        self._refresh()

    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - len(self.running))

    def counts(self) -> str:
        return (
            f"{self.done} done, {len(self.running)} running, {self.pending()} pending, "
            f"{self.failed} failed of {self.total}"
        )

    def eta(self) -> float | None:
        """Seconds left at the pace of the epochs finished so far in this run (None before the
        first epoch ends)."""
        if self._started is None or self.epochs_done == 0:
            return None
        left = sum(max(0, t.epochs - t.epoch) for t in self.running.values())
        left += self.pending() * self.epochs
        return left * (self._clock() - self._started) / self.epochs_done

    def _line(self, text: str) -> None:
        if self._live is not None:
            self._console.print(text, markup=False)
        else:
            print(text, file=self._stream, flush=True)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def _render(self) -> Group:
        """The live view: the counts and ETA, then one row per running trial."""
        status = Text(f"trials: {self.counts()}  ETA {duration(self.eta())}", style="bold")
        if not self.running:
            return Group(status)
        table = Table(box=None, pad_edge=False)
        for column in ("running trial", "epoch", "latest"):
            table.add_column(column, style=None, header_style="dim")
        for key, t in self.running.items():
            table.add_row(key, f"{t.epoch}/{t.epochs}", t.latest)
        return Group(status, table)


class ShortTrialErrors(logging.Filter):
    """Tune logs a failed trial's whole traceback, with Ray's colour codes in it; this makes it
    one line: the trial and the exception's last line. The trial's MLflow run keeps the reason
    (the summary prints it), Ray's log files the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and message.startswith("Trial task failed"):
            error = record.exc_info[1]
            lines = str(error).strip().splitlines() if error is not None else []
            last = ANSI_CODE.sub("", lines[-1]) if lines else type(error).__name__
            record.msg, record.args = f"{message}: {last}", None
            record.exc_info, record.exc_text = None, None
        return True


# Set while a Tuner runs without --verbose: Tune's legacy reporter (verbosity 0 prints nothing)
# instead of its default one, which prints a config box and a TensorBoard hint even at verbosity
# 0 (ray/tune/experimental/output.py, read at each fit); and no warning that the experiment
# state was snapshotted twice within 5 s (ray/tune/execution/experiment_state.py: short trials
# that checkpoint every epoch, with num_to_keep set, force a snapshot each time; 0 turns it off).
QUIET_TUNE_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextmanager
def tune_output(verbose: bool) -> Iterator[None]:
    """While a Tuner runs, without `verbose`: the environment of QUIET_TUNE_ENV (a value the
    user set is kept) and a failed trial's error in one line (ShortTrialErrors)."""
    before = {name: os.environ.get(name) for name in QUIET_TUNE_ENV}
    controller = logging.getLogger(TUNE_CONTROLLER_LOGGER)
    short = ShortTrialErrors()
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = QUIET_TUNE_ENV["RAY_AIR_NEW_OUTPUT"]
        for name, value in QUIET_TUNE_ENV.items():
            os.environ.setdefault(name, value)
        controller.addFilter(short)
    try:
        yield
    finally:
        controller.removeFilter(short)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def quiet_libraries(verbose: bool) -> None:
    """Without `verbose`, only warnings and errors from MLflow (its database migrations log
    INFO lines) and alembic reach the console, here and in the processes this one starts.
    MLflow sets its loggers' level from MLFLOW_LOGGING_LEVEL when imported, so both the
    variable (unless the user set it) and the loggers already configured are set."""
    if verbose:
        return
    level = os.environ.setdefault(MLFLOW_LEVEL_ENV, "WARNING").upper()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
