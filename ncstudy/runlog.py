"""What a worker loop records: rank 0's MLflow run (`RunLogger`, shared by the network loop and
the UFM loop) and the scalar view of a report that Tune sees (`tune_view`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ncstudy import tracking
from ncstudy.targets import RunTarget


class RunLogger:
    """Metrics and tags of one trial's MLflow run, written by rank 0 only; on other ranks, and
    without a run target (tests, plain processes), every call does nothing."""

    def __init__(self, run: RunTarget | None, is_main: bool) -> None:
        self.run = run if is_main else None
        self.client = None if self.run is None else tracking.client(self.run.tracking_uri)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log the metrics at `step`."""
        if self.run is not None:
            tracking.log_metrics(self.client, self.run.run_id, metrics, step=step)

    def tag(self, tags: dict[str, str]) -> None:
        """Set tags on the run."""
        if self.run is not None:
            for key, value in tags.items():
                self.client.set_tag(self.run.run_id, key, value)


def tune_view(metrics: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """What Tune sees of a report: the metrics whose names start with one of `prefixes` (its
    result logs stay small: scalars and the status, never the NC block)."""
    keep = tuple(prefixes)
    return {k: v for k, v in metrics.items() if k.startswith(keep)}
