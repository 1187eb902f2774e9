"""Tables as Markdown and CSV files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ncstudy.report.tables import Table


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a frame of strings (pipes escaped)."""
    if frame.columns.empty:
        return "_(no columns)_"

    def cell(v: object) -> str:
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in frame.columns) + " |",
        "|" + "|".join("---" for _ in frame.columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    if frame.empty:
        lines.append("| " + " | ".join(["_(none)_"] + [""] * (len(frame.columns) - 1)) + " |")
    return "\n".join(lines)


def table_markdown(table: Table) -> str:
    """One table as a Markdown section: title, caption, table (or why it is not available)."""
    if table.unavailable is not None:
        return f"## {table.title}\n\n_Not available because {table.unavailable}._\n"
    return f"## {table.title}\n\n{table.caption}\n\n{markdown_table(table.display)}\n"


def write_tables(tables: list[Table], out_dir: Path) -> list[Path]:
    """Write `<name>.csv` (numeric data) and `<name>.md` (display) for each table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        if table.unavailable is not None:
            continue  # no data: the report says why
        csv = out_dir / f"{table.name}.csv"
        table.data.to_csv(csv, index=False)
        md = out_dir / f"{table.name}.md"
        md.write_text(table_markdown(table))
        paths += [csv, md]
    return paths
