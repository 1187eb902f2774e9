"""What a worker loop records: rank 0's MLflow run (`RunLogger`, shared by the network loop and
the UFM loop) and the scalar view of a report that Tune sees (`tune_view`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import Any

from ncstudy import tracking
from ncstudy.history import logged_steps, not_logged
from ncstudy.mlflow_model import log_trial_model
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
            log_inputs(self.client, self.run.run_id, dataset_inputs(dataset, sizes))

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

    def model(self, net: Any, meta: dict[str, Any], example: Any) -> None:
        """Log the trained network (`net`: encoder + loss head) as the run's MLflow model
        `model` (mlflow_model.log_trial_model: `meta` as its metadata, the signature of the
        inputs `example`)."""
        if self.run is not None:
            log_trial_model(self.run.tracking_uri, self.run.run_id, net, meta, example)


def log_inputs(client: Any, run_id: str, inputs: list[Any], attempts: int = 3) -> None:
    """client.log_inputs, again when another trial inserted the same dataset in between: MLflow's
    SQL store looks a dataset up, then inserts it, so two trials of one experiment starting
    together can both insert it; the loser's unique-constraint error fails its trial (seen:
    two digits trials on 2 cores). A second call finds the row and only links it to the run."""
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except Exception as err:
            if attempt + 1 == attempts or not _duplicate_dataset(err):
                raise


def _duplicate_dataset(err: BaseException) -> bool:
    """The error of a dataset row inserted twice (SQLAlchemy's IntegrityError on `datasets`,
    through the SQL store or a tracking server's message)."""
    text = f"{err} {err.__cause__}".lower()
    return "unique constraint" in text and "datasets" in text


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


def data_metrics(class_counts: Iterable[int]) -> dict[str, float]:
    """`data/imbalance_ratio`: the largest over the smallest class count of the training split
    (1 for balanced data; classes without a training sample are left out of the smallest)."""
    present = [int(n) for n in class_counts if int(n) > 0]
    return {"data/imbalance_ratio": max(present) / min(present)} if present else {}


def tune_view(metrics: dict[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """What Tune sees of a report: the metrics whose names start with one of `prefixes` (its
    result logs stay small: scalars and the status, never the NC block)."""
    keep = tuple(prefixes)
    return {k: v for k, v in metrics.items() if k.startswith(keep)}
