"""The pieces of a restart (issue 19, section 2), without Ray: the newest complete checkpoint of
a folder (a newer one cut short is passed over), and a run logger that never logs a (metric,
step) its run already holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs
import torch
from mlflow.tracking import MlflowClient

from ncstudy.checkpoints import CHECKPOINT_FILE, MARKER_FILE, newest_complete
from ncstudy.context import _state_dir
from ncstudy.history import next_step
from ncstudy.runlog import RunLogger
from ncstudy.targets import RunTarget


def _save(root: Path, name: str, epoch: int) -> Path:
    """A checkpoint folder as the worker loops write it (state file and marker)."""
    with _state_dir({"epoch": epoch, "w": torch.full((3,), float(epoch))}) as path:
        shutil.copytree(path, root / name)
    return root / name


def test_the_newest_complete_checkpoint_wins(tmp_path: Path) -> None:
    fs = pyarrow.fs.LocalFileSystem()
    assert newest_complete(fs, str(tmp_path / "absent")) is None
    _save(tmp_path, "checkpoint_000000", 1)
    _save(tmp_path, "checkpoint_000009", 4)  # names do not order them: epochs do
    _save(tmp_path, "checkpoint_000010", 3)
    cut = _save(tmp_path, "checkpoint_000011", 6)  # cut short while it was copied
    blob = (cut / CHECKPOINT_FILE).read_bytes()
    (cut / CHECKPOINT_FILE).write_bytes(blob[: len(blob) // 2])
    unmarked = _save(tmp_path, "checkpoint_000012", 7)  # no marker: not known complete
    (unmarked / MARKER_FILE).unlink()
    found = newest_complete(fs, str(tmp_path))
    assert found is not None
    assert found.state["epoch"] == 4 and found.source.endswith("checkpoint_000009")
    assert torch.equal(found.state["w"], torch.full((3,), 4.0))
    # a marker that does not parse, or a state file of other bytes, is no checkpoint either
    (tmp_path / "checkpoint_000009" / MARKER_FILE).write_text("{not json")
    (tmp_path / "checkpoint_000010" / CHECKPOINT_FILE).write_bytes(b"\0" * 10)
    assert newest_complete(fs, str(tmp_path)).state["epoch"] == 1  # type: ignore[union-attr]


def test_a_restarted_logger_logs_each_step_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MlflowClient(uri)
    run_id = mlf.create_run(mlf.create_experiment("x")).info.run_id
    target = RunTarget(tracking_uri=uri, run_id=run_id)
    first = RunLogger(target, is_main=True)
    first.log({"train/loss": 1.0, "epoch": 1}, 1)
    first.log({"train/loss": 0.5, "epoch": 2}, 2)
    again = RunLogger(target, is_main=True)  # the trial restarted from epoch 1's checkpoint
    again.log({"train/loss": 0.6, "epoch": 2, "test/acc1": 0.9}, 2)
    again.log({"train/loss": 0.3, "epoch": 3}, 3)
    history = mlf.get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 0.3)]
    assert [m.step for m in mlf.get_metric_history(run_id, "test/acc1")] == [2]
    # values logged once per driver session get the next step
    assert next_step(mlf, run_id, ["summary/x"]) == 0
    assert next_step(mlf, run_id, ["train/loss", "summary/x"]) == 4
