"""SpecError and the formatting of pydantic errors into 'field.path: message' lines."""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """A study file that cannot run; the message names the field and the fix."""


def _first_error(err: ValidationError, root: type[BaseModel]) -> str:
    """Format pydantic errors as 'field.path: message' lines; an unknown field lists the
    fields allowed where it stands (its location read from `root`, the StudySpec)."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"], root)
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def _unknown_field(loc: tuple[int | str, ...], root: type[BaseModel]) -> str:
    """'unknown field; allowed: ...' (with the closest spelling) for the section at `loc`."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):  # a list index: the list's items are `model`
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _section_model(field.annotation) if field is not None else None
    if model is None:
        return "unknown field; check its spelling against the documented fields"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field{hint}; allowed here: {', '.join(allowed)}"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field's type (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None
