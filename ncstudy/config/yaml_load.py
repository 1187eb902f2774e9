"""Reading a study YAML with bounds: a safe loader (safe_load's tags only) that refuses
duplicate keys and bounds what it reads, so that a hostile or broken file is refused in
milliseconds instead of expanding into gigabytes.

Bounds: the file size (`MAX_FILE_BYTES`), the number of YAML nodes counted with every alias
expanded (`MAX_NODES`: an alias bomb is a few hundred bytes whose expansion has billions of
nodes; PyYAML shares aliased objects, so the blow-up would come later, in validation and in
the error message) and the length of one scalar (`MAX_SCALAR_CHARS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_FILE_BYTES = 128 << 10  # 128 KiB: a study file is a few KB
MAX_NODES = 50_000  # keys, values and list items, with aliases expanded
MAX_SCALAR_CHARS = 10_000  # one key or value


class YamlLimitError(ValueError):
    """A study file that is too large, too deeply aliased or has a duplicate key."""


# libyaml's parser (PyYAML's C extension) when installed: about 10x faster on large input;
# the constructor is SafeConstructor either way (safe_load's tags only).
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class StudyLoader(_SafeBase):
    """A safe loader that refuses a key given twice in one mapping (YAML 1.2 forbids it;
    PyYAML silently keeps the last), naming the key and both lines."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys merge; explicit keys override them by design
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            seen[key] = line
            if first is not None:
                raise YamlLimitError(
                    f"duplicate key {_short(key)!r} on lines {first} and {line}; give each key once"
                )
        return super().construct_mapping(node, deep=deep)


def read_study_yaml(path: Path) -> Any:
    """The parsed YAML of a study file; raises YamlLimitError (bounds, duplicate keys),
    yaml.YAMLError (syntax) or OSError (unreadable)."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise YamlLimitError(
            f"the file is {size:,} bytes; a study file is at most {MAX_FILE_BYTES:,} bytes "
            "(a study is a few KB: is this the right file?)"
        )
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since stat
    if len(data) > MAX_FILE_BYTES:
        raise YamlLimitError(f"the file is over {MAX_FILE_BYTES:,} bytes")
    return load_bounded(data.decode("utf-8", errors="strict"))


def load_bounded(text: str) -> Any:
    """yaml.safe_load(text) with the node and scalar bounds and the duplicate-key check."""
    loader = StudyLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_size(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_size(root: Node) -> None:
    """Count the nodes of the document with aliases expanded (each distinct node's expanded
    size once, so this takes time linear in the file, not in the expansion)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if not children_done:
            _check_scalar(node)
            if id(node) in open_nodes:
                raise YamlLimitError(
                    f"line {node.start_mark.line + 1}: a YAML alias refers to a node that "
                    "contains it (an endless structure); write the values out"
                )
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        open_nodes.discard(id(node))
        total = 1 + sum(sizes.get(id(k), 0) for k in kids)
        if total > MAX_NODES:
            raise YamlLimitError(
                f"line {node.start_mark.line + 1}: this part expands to more than "
                f"{MAX_NODES:,} keys and values (YAML aliases, *name, repeat what they "
                "refer to); a study is far smaller: write the values out"
            )
        sizes[id(node)] = total


def _check_scalar(node: Node) -> None:
    if isinstance(node, ScalarNode) and len(node.value) > MAX_SCALAR_CHARS:
        raise YamlLimitError(
            f"line {node.start_mark.line + 1}: a value of {len(node.value):,} characters; at "
            f"most {MAX_SCALAR_CHARS:,}"
        )


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
