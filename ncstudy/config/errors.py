"""SpecError and the formatting of pydantic errors into 'field.path: message' lines."""

from __future__ import annotations

import difflib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError


class SpecError(ValueError):
    """A study file that cannot run; the message names the field and the fix."""


class TrialConfigError(SpecError):
    """A trial whose configuration cannot run (found inside the trial: e.g. a batch larger
    than its training split). Deterministic, so the trial function ends the trial's run
    FAILED instead of raising: Ray's FailureConfig would retry it and fail the same way."""


def config_error_in(err: BaseException) -> TrialConfigError | None:
    """The TrialConfigError behind `err` (its cause/context chain, or the per-worker errors
    of a Ray Train worker group), if any."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TrialConfigError):
            return e
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
        workers = getattr(e, "worker_failures", None)  # ray.train WorkerGroupError
        if isinstance(workers, dict):
            todo += [x for x in workers.values() if isinstance(x, BaseException)]
    return None


MAX_SHOWN_ERRORS = 5  # a file of junk keys has one error per key: show the first few
MAX_ERROR_CHARS = 300  # one error line (a field path can be a 10k-character key)


def _first_error(err: ValidationError, root: type[BaseModel]) -> str:
    """Format pydantic errors as 'field.path: message' lines; an unknown field lists the
    fields allowed where it stands (its location read from `root`, the StudySpec). At most
    MAX_SHOWN_ERRORS, then a count of the rest."""
    errors = err.errors(include_url=False, include_input=False)
    lines = []
    for e in errors[:MAX_SHOWN_ERRORS]:
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = _unknown_field(e["loc"], root) if e["type"] == "extra_forbidden" else error_message(e)
        lines.append(_clip(f"{where}: {msg}"))
    if len(errors) > MAX_SHOWN_ERRORS:
        lines.append(f"... and {len(errors) - MAX_SHOWN_ERRORS:,} more errors")
    return "; ".join(lines)


def error_message(error: Any) -> str:
    """The message of one pydantic error (without pydantic's 'Value error, ' prefix)."""
    if error["type"] == "finite_number":  # allow_inf_nan=False (sections.FINITE)
        return "must be a finite number (.inf and .nan are refused)"
    return str(error["msg"]).removeprefix("Value error, ")


def _clip(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    close = difflib.get_close_matches(str(loc[-1])[:100], allowed, n=1)
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
