"""`python -m ncstudy.report <study name | study folder | study YAML>`: read a study back from
MLflow and write its report (tables, figures, index.html) to a folder and to the parent run.
`python -m ncstudy.report STUDY1 STUDY2 ... --out DIR`: one report over several studies (the
source paper's Table 1 across datasets), written to DIR only.

Exit codes: 0 report written; 2 a study could not be found or read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ncstudy import tracking
from ncstudy.config import SpecError, load_study
from ncstudy.report import build, load  # as modules: looked up when main runs (tests patch)
from ncstudy.report.across import write_across_report
from ncstudy.report.load import ReportError

DEFAULT_OUTPUT = "./ncstudy-runs"


@dataclass(frozen=True)
class Target:
    """Where a study lives: its name, output folder and MLflow store."""

    name: str
    output_dir: Path
    tracking_uri: str

    @property
    def study_dir(self) -> Path:
        return self.output_dir / self.name


def resolve_target(target: str, output: str | None = None) -> Target:
    """A study folder (`<output>/<name>`, holding study.yaml), a study YAML, or a study name
    (in `output`, default ./ncstudy-runs). MLFLOW_TRACKING_URI overrides the local store."""
    path = Path(target).expanduser()
    if path.is_dir():
        marker = path / "study.yaml"
        if not marker.exists():
            raise ReportError(
                f"{path} is not a study folder (no study.yaml); pass the folder "
                "<output_dir>/<study name>, a study YAML, or a study name with --output"
            )
        name = yaml.safe_load(marker.read_text())["name"]
        output_dir = Path(output).expanduser() if output else path.resolve().parent
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        try:
            study = load_study(path, {"output_dir": output} if output else None)
        except SpecError as err:
            raise ReportError(str(err)) from None
        name, output_dir = study.name, Path(study.output_dir).expanduser()
    else:
        name, output_dir = target, Path(output or DEFAULT_OUTPUT).expanduser()
    output_dir = output_dir.resolve()
    return Target(name, output_dir, tracking.default_tracking_uri(output_dir))


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ncstudy.report",
        description="Tables and figures of a study, read back from MLflow, written to a folder "
        "and logged to the study's parent run.",
    )
    parser.add_argument(
        "study",
        nargs="+",
        help="study name, study folder <output>/<name>, or study YAML; several: one report "
        "across them (needs --out)",
    )
    parser.add_argument("--output", help=f"output folder of the study (default {DEFAULT_OUTPUT})")
    parser.add_argument("--out", help="report folder (default <output>/<name>/report)")
    parser.add_argument(
        "--no-mlflow", action="store_true", help="write the folder only, log no artifacts"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if len(args.study) > 1:
        return across_main(args.study, args.output, args.out)
    try:
        target = resolve_target(args.study[0], args.output)
        data = load.load_study_data(
            target.name, target.tracking_uri, study_yaml=target.study_dir / "study.yaml"
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out_dir = Path(args.out).expanduser().resolve() if args.out else target.study_dir / "report"
    report = build.write_report(data, out_dir, log_to_mlflow=not args.no_mlflow)
    for table in report.tables:
        if table.unavailable is not None:
            print(
                f"note: {table.title}: not available because {table.unavailable}", file=sys.stderr
            )
    print(f"study '{data.name}': {build.status_line(data)}")
    print(f"report: {report.index}  ({len(report.tables)} tables, {len(report.figures)} figures)")
    if report.logged_to:
        print(f"logged to MLflow run {report.logged_to} under report/")
    return 0


def across_main(studies: list[str], output: str | None, out: str | None) -> int:
    """The report over several studies (Table 1 across datasets), written to `out`."""
    if not out:
        print(
            "error: several studies need --out DIR (the combined report's folder)", file=sys.stderr
        )
        return 2
    loaded = []
    try:
        for study in studies:
            target = resolve_target(study, output)
            yaml_path = target.study_dir / "study.yaml"
            loaded.append(load.load_study_data(target.name, target.tracking_uri, yaml_path, False))
    except ReportError as err:
        print(f"error: {study}: {err}", file=sys.stderr)
        return 2
    index, tables = write_across_report(loaded, Path(out).expanduser().resolve())
    for table in tables:
        if table.unavailable is not None:
            print(
                f"note: {table.title}: not available because {table.unavailable}", file=sys.stderr
            )
    print(f"studies {', '.join(d.name for d in loaded)}: {len(tables)} tables")
    print(f"report: {index}  (not logged to MLflow: no single study owns it)")
    return 0
