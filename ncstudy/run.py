"""`python -m ncstudy.run STUDY.yaml`: validate, expand, run every trial, print the summary.

Exit codes: 0 all trials finished; 1 some trial failed; 2 the study could not start (bad YAML,
existing study without --resume, unwritable output folder); 130 interrupted (resume later with
--resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ncstudy.spec import SpecError, StudySpec, TrialSpec, expand, load_study


def build_parser() -> argparse.ArgumentParser:
    """The command line (losses and their parameters are listed in --help)."""
    from ncstudy.losses import describe_losses

    parser = argparse.ArgumentParser(
        prog="python -m ncstudy.run",
        description="Run a neural-collapse study: every trial of the YAML's grid, on Ray, "
        "logged to MLflow.",
        epilog="losses:\n" + describe_losses(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", help="the study YAML (see studies/)")
    parser.add_argument("--dry-run", action="store_true", help="print the trial table and exit")
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
    return parser


def trial_table(trials: Sequence[TrialSpec]) -> str:
    """The --dry-run table: one line per trial."""
    header = f"{'trial':<32} {'loss':<10} {'tau':>6} {'batch':>6} {'seed':>5} {'lr':>9}  axes"
    lines = [header, "-" * len(header)]
    for t in trials:
        tau = "-" if t.temperature is None else f"{t.temperature:g}"
        axes = " ".join(f"{k}={v}" for k, v in t.axes.items())
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
    from ncstudy.search import loss_space, n_trials

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from ncstudy.study import StudyError, StudyPaths, format_summary, mlflow_ui_command, run_study

    try:
        overrides = {"output_dir": args.output} if args.output else None
        study: StudySpec = load_study(args.study, overrides)
        trials = expand(study)
        if args.dry_run:
            print(trial_table(trials) if study.search is None else search_table(study))
            return 0
        from ncstudy.cluster import resolve_address

        address = resolve_address(args.address)
        what = f"{len(trials)} trials" if study.search is None else "an Optuna search per loss"
        print(f"study '{study.name}': {what} -> {study.study_dir}", flush=True)
        rows = run_study(study, resume=args.resume, address=address, storage_path=args.storage_path)
    except (SpecError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: resume with  python -m ncstudy.run {args.study} --resume",
            file=sys.stderr,
        )
        return 130
    print()
    print(format_summary(rows))
    print(f"\nbrowse the runs:  {mlflow_ui_command(StudyPaths.of(study, args.storage_path))}")
    if study.search is not None:
        from ncstudy.search import optuna_storage_url

        print(f"optuna study:  optuna-dashboard {optuna_storage_url(study.study_dir)}")
    # pruned search trials end KILLED by design; only failures make the exit code 1
    return 1 if any(r.status in ("FAILED", "NOT STARTED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
