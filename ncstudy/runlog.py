"""What a worker loop records: rank 0's MLflow run (`RunLogger`, shared by the network loop and
the UFM loop) and the scalar view of a report that Tune sees (`tune_view`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ncstudy import tracking
from ncstudy.history import logged_steps, not_logged
from ncstudy.targets import RunTarget


class RunLogger:
    """Metrics and tags of one trial's MLflow run, written by rank 0 only; on other ranks, and
    without a run target (tests, plain processes), every call does nothing."""

    def __init__(self, run: RunTarget | None, is_main: bool) -> None:
        self.run = run if is_main else None
        self.client = None if self.run is None else tracking.client(self.run.tracking_uri)
        # what an earlier attempt of the trial logged: a restart never logs a step twice
        self.logged = set() if self.run is None else logged_steps(self.client, self.run.run_id)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log the metrics at `step` (those the run does not hold at `step` already)."""
        if self.run is not None:
            fresh = not_logged(metrics, step, self.logged)
            tracking.log_metrics(self.client, self.run.run_id, fresh, step=step)

    def tag(self, tags: dict[str, str]) -> None:
        """Set tags on the run."""
        if self.run is not None:
            for key, value in tags.items():
                self.client.set_tag(self.run.run_id, key, value)

    def inputs(self, dataset: dict[str, Any], sizes: dict[str, int]) -> None:
        """Log the trial's data as MLflow dataset inputs, one per split (`sizes`: split ->
        samples); `dataset` is the trial's dataset section (JSON)."""
        if self.run is not None:
            self.client.log_inputs(self.run.run_id, datasets=dataset_inputs(dataset, sizes))

    @contextlib.contextmanager
    def system_metrics(self, enabled: bool) -> Iterator[None]:
        """MLflow's system metrics (CPU, GPU, memory, disk, network as `system/...`, every
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds, 10 by default, and once at the end)
        while the block runs."""
        if self.run is None or not enabled:
            yield
            return
        # mlflow's monitor (psutil, pynvml): only where a trial logs
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run.run_id, resume_logging=True, tracking_uri=self.run.tracking_uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()
            # MLflow's loop drops the samples of the interval the end cut short (all of them
            # in a trial shorter than one interval): they are logged as the last step
            last = monitor.aggregate_metrics()
            if last:
                monitor.publish_metrics(last)
                monitor.mlflow_logger.flush()

    def model(self, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """Log the trained network (`state`: its state_dict) and what rebuilds it (`meta`: the
        resolved trial, the input shape, the class count) as the artifact folder `model/`."""
        if self.run is None:
            return
        import torch  # torch: loaded already in every process that trains

        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state, Path(tmp) / MODEL_FILE)
            (Path(tmp) / MODEL_META).write_text(json.dumps(meta, indent=1))
            self.client.log_artifacts(self.run.run_id, tmp, MODEL_DIR)


MODEL_DIR, MODEL_FILE, MODEL_META = "model", "state_dict.pt", "trial.json"
SPLITS = {"train": "training", "val": "validation", "test": "test"}  # MLflow's context names


def dataset_inputs(dataset: dict[str, Any], sizes: dict[str, int]) -> list[Any]:
    """MLflow dataset inputs for each non-empty split: name, source (the data's folder, or the
    built-in loader), a digest of the dataset section and the split (ncstudy's splits are a
    deterministic function of it), and the split's size as its profile."""
    # mlflow's entities: only where a trial logs
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = dataset.get("root") or f"ncstudy built-in dataset '{dataset['name']}'"
    out = []
    for split, n in sizes.items():
        if n == 0:
            continue
        blob = json.dumps({"dataset": dataset, "split": split, "size": n}, sort_keys=True)
        entity = Dataset(
            name=dataset["name"],
            digest=hashlib.sha256(blob.encode()).hexdigest()[:12],
            source_type="local" if dataset.get("root") else "code",
            source=json.dumps({"uri": source}),
            profile=json.dumps({"num_rows": n, "split": split}),
        )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, SPLITS.get(split, split))]
        out.append(DatasetInput(entity, tags))
    return out


def tune_view(metrics: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """What Tune sees of a report: the metrics whose names start with one of `prefixes` (its
    result logs stay small: scalars and the status, never the NC block)."""
    keep = tuple(prefixes)
    return {k: v for k, v in metrics.items() if k.startswith(keep)}
