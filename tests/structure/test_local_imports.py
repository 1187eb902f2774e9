"""Every function-local import in the ncstudy package says why it is local (issue #13): a `#`
comment on its own line(s) or the line above; a group of consecutive local imports is covered by
a comment on its first import or the line above the group. Local imports are for avoiding a heavy
import on a light path or an import cycle; anything else belongs at the top of the module."""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMPORT = ast.Import | ast.ImportFrom


def _groups(body: list[ast.stmt], local: bool) -> Iterator[list[IMPORT]]:
    """Runs of consecutive import statements inside a function, at any depth."""
    run: list[IMPORT] = []
    for stmt in body:
        if local and isinstance(stmt, IMPORT):
            run.append(stmt)
            continue
        if run:
            yield run
            run = []
        inner = local or isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef)
        for field in ("body", "handlers", "cases", "orelse", "finalbody"):  # in source order
            blocks = getattr(stmt, field, [])
            for block in [b.body for b in blocks] if field in ("handlers", "cases") else [blocks]:
                yield from _groups(block, inner)
    if run:
        yield run


def uncommented_local_imports(root: Path) -> Iterator[str]:
    """`path:line module` for every function-local import whose group has no comment."""
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        comments = {t.start[0] for t in tokens if t.type == tokenize.COMMENT}
        for run in _groups(ast.parse(source, filename=str(path)).body, local=False):
            first = run[0]
            if comments & set(range(first.lineno - 1, first.end_lineno + 1)):  # type: ignore[operator]
                continue
            for node in run:
                name = node.names[0].name if isinstance(node, ast.Import) else node.module
                name = "." * getattr(node, "level", 0) + (name or "")
                yield f"{path.relative_to(root.parent)}:{node.lineno} {name}"


def test_every_function_local_import_says_why() -> None:
    found = list(uncommented_local_imports(ROOT / "ncstudy"))
    assert not found, "function-local imports without a comment saying why:\n" + "\n".join(found)


def test_the_check_finds_uncommented_local_imports(tmp_path: Path) -> None:
    """The checker itself: module-level imports pass; a local import (in a method, under `try`)
    without a comment fails; a comment above a group or on its first import covers the group."""
    (tmp_path / "m.py").write_text(
        "import os\n"
        "def f():\n    # why\n    import a\n    import b\n"
        "def g():\n    import c  # why\n    from . import d\n"
        "class K:\n    def h(self):\n        try:\n            import e\n        except E:\n"
        "            from x import y\n\n\n    import z\n"
        "def k():\n    s = '# not a comment'\n    import w\n"
    )
    assert list(uncommented_local_imports(tmp_path)) == [
        f"{tmp_path.name}/m.py:12 e",
        f"{tmp_path.name}/m.py:14 x",
        f"{tmp_path.name}/m.py:20 w",
    ]
