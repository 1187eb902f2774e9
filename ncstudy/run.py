"""`python -m ncstudy.run STUDY.yaml`: validate, expand, run every trial, print the summary.

Exit codes: 0 all trials finished; 1 some trial failed; 2 the study could not start (bad YAML,
existing study without --resume, edited study with --resume, another driver runs the study, no
trial fits, not enough free space, unwritable output folder, a Ray cluster / MLflow server /
database that does not answer or refuses the login);
130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM (`ray job stop`, a pod eviction):
resume later with --resume.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ncstudy import study as driver
from ncstudy.cluster import resolve_address
from ncstudy.config import SpecError, StudySpec, TrialSpec, expand, load_study
from ncstudy.diskfull import EXIT_CODE as DISK_FULL_EXIT
from ncstudy.diskfull import DiskFull
from ncstudy.diskspace import check_free_space
from ncstudy.paths import StudyError, StudyPaths
from ncstudy.progress import quiet_libraries
from ncstudy.summary import format_summary, mlflow_ui_command
from ncstudy.tracking import shown_uri


def build_parser() -> argparse.ArgumentParser:
    """The command line (losses and their parameters are listed in --help)."""
    from ncstudy.losses import describe_losses  # the loss registry imports torch

    parser = argparse.ArgumentParser(
        prog="python -m ncstudy.run",
        description="Run a neural-collapse study: every trial of the YAML's grid, on Ray, "
        "logged to MLflow.",
        epilog="losses:\n" + describe_losses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", help="the study YAML (see studies/)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the trial table, run the pre-flight checks (data paths, whether a trial "
        "fits this machine) and exit: 0 if a run could start, 2 if not",
    )
    parser.add_argument("--resume", action="store_true", help="finish an interrupted study")
    parser.add_argument("--output", help="output folder (overrides the YAML's output_dir)")
    parser.add_argument(
        "--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument(
        "--storage-path",
        help="shared storage for Ray results on a cluster: s3://, gs:// or an NFS path "
        "(default: $NCSTUDY_STORAGE_PATH, else the study folder)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show Ray's and Tune's own console output"
    )
    return parser


def trial_table(
    trials: Sequence[TrialSpec], train_overrides: dict[str, dict[str, Any]] | None = None
) -> str:
    """The --dry-run table: one line per trial. `train_overrides` (loss -> its `train:` fields)
    adds each loss's own recipe fields to the last column (lr has its own)."""
    train_overrides = train_overrides or {}
    header = f"{'trial':<32} {'loss':<10} {'tau':>6} {'batch':>6} {'seed':>5} {'lr':>9}  axes"
    lines = [header, "-" * len(header)]
    for t in trials:
        tau = "-" if t.temperature is None else f"{t.temperature:g}"
        own = {f"train.{k}": v for k, v in train_overrides.get(t.loss, {}).items() if k != "lr"}
        axes = " ".join(f"{k}={v}" for k, v in {**t.axes, **own}.items())
        lines.append(
            f"{t.key:<32} {t.loss:<10} {tau:>6} {t.batch_size:>6} {t.seed:>5} {t.lr:>9.4g}  {axes}"
        )
    lines.append(f"{len(trials)} trials")
    return "\n".join(lines)


def _dim(dim: object) -> str:
    if isinstance(dim, list):
        return str(dim)
    return f"[{dim.low:g}, {dim.high:g}]" + (" log" if dim.log else "")  # type: ignore[attr-defined]


def search_table(study: StudySpec) -> str:
    """The --dry-run description of an Optuna search."""
    from ncstudy.search import loss_space, n_trials  # optuna and ray: only for searches

    search = study.search
    assert search is not None
    lines = [
        f"optuna search: sampler {search.sampler} (seed {search.seed}), pruner {search.pruner}, "
        f"{search.mode} {search.metric}, seed {study.grid.seed[0]}"
    ]
    for loss in study.losses:
        space = ", ".join(f"{k}={_dim(v)}" for k, v in loss_space(search, loss).items())
        lines.append(f"  {loss.name:<10} {n_trials(search, loss):>4} trials  {space}")
    return "\n".join(lines)


class _Stop:
    """SIGTERM stops a study the way Ctrl-C does: Ray Tune's SIGINT handler (during a run) ends
    the trials and saves the experiment, otherwise KeyboardInterrupt; either way the runs end
    KILLED and the study can be resumed."""

    received = False

    @classmethod
    def on_sigterm(cls, signum: int, frame: object) -> None:
        cls.received = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)  # Tune's handler, or Python's KeyboardInterrupt
        else:  # SIGINT ignored (a background job): interrupt all the same
            raise KeyboardInterrupt


def install_sigterm_handler() -> None:
    """Make SIGTERM behave like Ctrl-C for the rest of this process (signal handlers can only
    be installed from the main thread; elsewhere this does nothing)."""
    _Stop.received = False
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _Stop.on_sigterm)


def preflight(
    study: StudySpec, trials: Sequence[TrialSpec], address: str | None, storage: str | None
) -> None:
    """The checks a run makes before Ray starts, for --dry-run and a real run alike; raises
    StudyError naming every problem found. Local: every data path, whether a trial fits this
    machine, and the free disk space for that many trials at once. On a cluster the data lives
    on the workers, and what fits is known once connected."""
    if address is not None:
        print("data paths are checked on the workers (cluster mode)", flush=True)
        return
    from ncstudy.data.preflight import check_study_data  # numpy: not for the trial table
    from ncstudy.tuning import local_concurrency  # torch: only once the table is printed

    if study.search is None:
        probe = trials[0]
    else:
        from ncstudy.search import trial_from_point  # optuna and ray: only for searches

        probe = trial_from_point(study, 0, {})
    problems: list[str] = []

    def attempt(check: Any) -> Any:
        try:
            return check()
        except (SpecError, StudyError, ValueError) as err:
            problems.append(str(err))
            return None

    attempt(lambda: check_study_data(study))
    at_once = attempt(lambda: local_concurrency(study, probe))
    if at_once is not None:
        paths = StudyPaths.of(study, storage)
        attempt(lambda: check_free_space(study, paths, probe, at_once))
    if problems:
        raise StudyError("\n".join(problems))


def resume_command(args: argparse.Namespace) -> str:
    """The exact command that resumes this study: its YAML and the options that say where it
    runs and writes."""
    words = ["python", "-m", "ncstudy.run", args.study, "--resume"]
    for flag, value in (
        ("--output", args.output),
        ("--address", args.address),
        ("--storage-path", args.storage_path),
    ):
        if value:
            words += [flag, value]
    return shlex.join(words)


def header(study: StudySpec, trials: Sequence[TrialSpec], paths: StudyPaths) -> str:
    """What a run prints first: the study, how many trials, where its results go."""
    where = f"-> {paths.study_dir}  (runs: {shown_uri(paths.tracking_uri)})"
    if study.search is None:
        return f"study '{study.name}': {len(trials)} trials {where}"
    from ncstudy.search import n_trials  # optuna and ray: only for searches

    total = sum(n_trials(study.search, loss) for loss in study.losses)
    return f"study '{study.name}': {total} trials (an Optuna search per loss) {where}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    try:
        overrides = {"output_dir": args.output} if args.output else None
        study: StudySpec = load_study(args.study, overrides)
        trials = expand(study)
        address = resolve_address(args.address)
        if args.dry_run:
            overrides = {loss.name: loss.train for loss in study.losses}
            print(trial_table(trials, overrides) if study.search is None else search_table(study))
            preflight(study, trials, address, args.storage_path)
            print("pre-flight checks passed: a run could start")
            return 0
        preflight(study, trials, address, args.storage_path)
        print(header(study, trials, StudyPaths.of(study, args.storage_path)), flush=True)
        install_sigterm_handler()
        rows = driver.run_study(
            study,
            resume=args.resume,
            address=address,
            storage_path=args.storage_path,
            verbose=args.verbose,
        )
    except (SpecError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskFull as err:  # stopped like Ctrl-C; --resume goes on once there is space
        print(
            f"\nstopped: a disk is full ({err.reason}); free space, then resume with  "
            f"{resume_command(args)}",
            file=sys.stderr,
        )
        return DISK_FULL_EXIT
    except KeyboardInterrupt:
        how = "stopped (SIGTERM)" if _Stop.received else "interrupted"
        print(f"\n{how}: resume with  {resume_command(args)}", file=sys.stderr)
        return 143 if _Stop.received else 130
    print_end(study, rows, args.storage_path)
    # pruned search trials end KILLED by design; only failures make the exit code 1
    return 1 if any(r.status in ("FAILED", "NOT STARTED") for r in rows) else 0


def print_end(study: StudySpec, rows: Sequence[Any], storage_path: str | None) -> None:
    """The end of a run: the summary table, then where to look, the MLflow link last."""
    print()
    print(format_summary(list(rows)))
    print()
    if study.search is not None:
        from ncstudy.search import dashboard_command  # optuna and ray: only for searches

        print(f"optuna study:  {dashboard_command(study.study_dir)}")
    browse = mlflow_ui_command(StudyPaths.of(study, storage_path), study.name)
    print(f"browse the runs:  {browse}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
