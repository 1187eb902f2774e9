"""The tag that names a search trial's Optuna trial number on its MLflow run. The number is the
one `search.search_trial` puts at the end of the trial's key (`-o12`, the only key ending so);
the Tune function tags the run with it and the report reads it back."""

from __future__ import annotations

import re
from collections.abc import Mapping

OPTUNA_TRIAL_TAG = "optuna.trial_number"
SEARCH_KEY = re.compile(r"-o(\d+)$")


def search_tags(key: str) -> dict[str, str]:
    """The run tags of a trial key: a search trial's Optuna number, else none."""
    m = SEARCH_KEY.search(key)
    return {OPTUNA_TRIAL_TAG: m.group(1)} if m else {}


def optuna_trial(tags: Mapping[str, str]) -> int | None:
    """The Optuna trial number a run's tags name, or None (a grid trial, or an older run)."""
    value = tags.get(OPTUNA_TRIAL_TAG)
    return int(value) if value is not None and value.isdigit() else None
