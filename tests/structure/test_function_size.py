"""No function in the ncstudy package is longer than 60 lines (issue #13): from its `def` line
to its last line, docstring included, decorators not. ruff's C901 (complexity <= 15) and
PLR0915 (statements) in pyproject.toml check the rest of the structure rules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60


def long_functions(root: Path, limit: int = MAX_LINES) -> Iterator[str]:
    """`path:line name (n lines)` for every function or method under `root` over `limit` lines,
    nested functions included."""
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > limit:
                    where = path.relative_to(root.parent) if root.parent in path.parents else path
                    yield f"{where}:{node.lineno} {node.name} ({lines} lines)"


def test_no_function_in_the_package_is_over_60_lines() -> None:
    found = list(long_functions(ROOT / "ncstudy"))
    assert not found, f"functions over {MAX_LINES} lines:\n" + "\n".join(found)


def test_the_check_counts_from_def_to_last_line(tmp_path: Path) -> None:
    """The checker itself: 60 lines pass, 61 fail (a method, found inside its class)."""
    body = "\n".join(f"        x{i} = {i}" for i in range(58))
    (tmp_path / "ok.py").write_text(f"class A:\n    def f(self):\n        '''doc'''\n{body}\n")
    assert list(long_functions(tmp_path)) == []
    (tmp_path / "long.py").write_text(
        f"class A:\n    @staticmethod\n    def g():\n        '''doc'''\n{body}\n        return 1\n"
    )
    assert [s.split(" ", 1)[1] for s in long_functions(tmp_path)] == ["g (61 lines)"]
