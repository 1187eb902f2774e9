"""`index.html`: the tables and figures on one self-contained page (images embedded as data
URIs, inline CSS, no scripts), so it reads offline and inside MLflow's artifact viewer."""

from __future__ import annotations

import base64
import html
import re

import pandas as pd

from ncstudy.report.figures import FigureFile
from ncstudy.report.tables import Table

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .caption { color: #444; max-width: 900px; }
.warning { color: #8a1f11; background: #fdecea; border: 1px solid #f5c2bd; padding: 6px 10px; }
.scroll { overflow-x: auto; max-width: 100%; max-height: 36em; overflow-y: auto; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
thead th { position: sticky; top: 0; z-index: 1; }
td:first-child { position: sticky; left: 0; background: #fff; white-space: nowrap; }
th:first-child { position: sticky; left: 0; z-index: 2; }
.unavailable { color: #555; font-style: italic; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
nav a { margin-right: 1em; }
"""
METRICS_DOC = "metrics.md"  # copied next to index.html by build.write_report
BOLD = re.compile(r"\*\*(.+?)\*\*")


def html_table(frame: pd.DataFrame) -> str:
    """A frame of strings as an HTML table; `**x**` becomes bold, everything else escaped."""

    def cell(v: object) -> str:
        return BOLD.sub(r"<b>\1</b>", html.escape("" if v is None else str(v)))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(False)
    )
    if frame.empty:
        body = f'<tr><td colspan="{max(1, len(frame.columns))}"><i>none</i></td></tr>'
    # wide or long tables scroll inside their box (sticky header and first column)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


def image_tag(figure: FigureFile) -> str:
    """The figure's PNG embedded as a data URI."""
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    alt = html.escape(figure.title)
    return f'<img src="data:image/png;base64,{data}" alt="{alt}">'


def render_index(
    title: str,
    meta: list[str],
    tables: list[Table],
    figures: list[FigureFile],
    warnings: list[str] | None = None,
) -> str:
    """The whole page: a header (warnings first), the tables (with links to their CSV and
    Markdown), the figures."""
    nav = "".join(f'<a href="#{t.name}">{html.escape(t.title)}</a>' for t in tables)
    nav += "".join(f'<a href="#{f.name}">{html.escape(f.title)}</a>' for f in figures)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f'<p class="warning">{html.escape(w)}</p>' for w in warnings or []),
        "".join(f'<p class="meta">{html.escape(m)}</p>' for m in meta),
        '<p class="meta">What each metric means, its ideal value and its source paper: '
        f'<a href="{METRICS_DOC}">{METRICS_DOC}</a> (docs/metrics.md of ncstudy).</p>',
        f"<nav>{nav}</nav>",
    ]
    for t in tables:
        if t.unavailable is not None:
            parts += [
                f'<h2 id="{t.name}">{html.escape(t.title)}</h2>',
                f'<p class="unavailable">Not available because {html.escape(t.unavailable)}.</p>',
            ]
            continue
        links = f'<a href="tables/{t.name}.csv">CSV</a> · <a href="tables/{t.name}.md">Markdown</a>'
        parts += [
            f'<h2 id="{t.name}">{html.escape(t.title)}</h2>',
            f'<p class="caption">{html.escape(t.caption)} ({links})</p>',
            html_table(t.display),
        ]
    for f in figures:
        parts += [
            f'<h2 id="{f.name}">{html.escape(f.title)}</h2>',
            f'<figure>{image_tag(f)}<figcaption class="caption">{html.escape(f.caption)}'
            "</figcaption></figure>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
