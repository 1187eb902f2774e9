"""The newest complete checkpoint of a trial (issue 19, section 2).

Ray hands a restarted trial the checkpoint its saved state knows of: after a crash of the
driver, Tune's experiment state (saved every few seconds) may name a checkpoint many epochs
older than the newest one on disk. Each checkpoint ncstudy writes therefore carries a marker,
`complete.json` (the epoch and the SHA-256 of `state.pt`), and a worker restores the newest
checkpoint in its trial's storage folder whose `state.pt` matches its marker: a checkpoint cut
short while it was copied (a kill, a full disk) never matches and is passed over.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "state.pt"
MARKER_FILE = "complete.json"
# Run tag: the epoch and checkpoint folder the last restart of the trial restored.
RESUMED_TAG = "ncstudy.resumed_from"


@dataclass(frozen=True)
class Restored:
    """A checkpoint's state and where it came from (`source`: its folder)."""

    state: dict[str, Any]
    source: str


def write_marker(folder: Path, epoch: int) -> None:
    """Mark the checkpoint in `folder` complete: its epoch and the digest of its state file."""
    digest = hashlib.sha256((folder / CHECKPOINT_FILE).read_bytes()).hexdigest()
    (folder / MARKER_FILE).write_text(json.dumps({"epoch": epoch, "sha256": digest}))


def progress_of(state: dict[str, Any]) -> int:
    """How far a checkpoint is: the network loop's epoch, or the UFM loop's iteration."""
    return int(state["epoch"] if "epoch" in state else state["ufm"]["iteration"])


def load_state_bytes(blob: bytes) -> dict[str, Any]:
    """A checkpoint's state dict. `weights_only=True`: tensors, numbers, strings and containers
    only, so a checkpoint in shared storage cannot run code when it is loaded."""
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def newest_complete(fs: Any, root: str) -> Restored | None:
    """The newest complete checkpoint among the `checkpoint_*` folders of `root` on the pyarrow
    filesystem `fs` (highest marked epoch whose state file matches its marker), or None."""
    import pyarrow.fs  # pyarrow: comes with Ray, only where a trial restores

    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    folders = [
        i.path
        for i in infos
        if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith("checkpoint_")
    ]
    marked = [(m["epoch"], path, m["sha256"]) for path in folders if (m := _marker(fs, path))]
    for _, path, digest in sorted(marked, reverse=True):
        blob = _read(fs, f"{path}/{CHECKPOINT_FILE}")
        if blob is not None and hashlib.sha256(blob).hexdigest() == digest:
            return Restored(load_state_bytes(blob), path)
    return None


def _marker(fs: Any, folder: str) -> dict[str, Any] | None:
    """The parsed marker of a checkpoint folder, or None where it is missing or unreadable."""
    blob = _read(fs, f"{folder}/{MARKER_FILE}")
    try:
        marker = json.loads(blob or b"")
    except ValueError:
        return None
    ok = isinstance(marker, dict) and isinstance(marker.get("epoch"), int)
    return marker if ok and isinstance(marker.get("sha256"), str) else None


def _read(fs: Any, path: str) -> bytes | None:
    """The bytes of a file on `fs`, or None where it cannot be read."""
    try:
        with fs.open_input_stream(path) as f:
            return f.readall()
    except OSError:
        return None


def restore_newest(handed: Any, storage: Any, root: str) -> Restored | None:
    """The newest complete checkpoint of the trial whose checkpoints live in `root` on
    `storage.storage_filesystem`, else the checkpoint Ray handed over (`handed`), else None."""
    found = newest_complete(storage.storage_filesystem, root)
    if found is not None or handed is None:
        return found
    with handed.as_directory() as d:
        return Restored(load_state_bytes((Path(d) / CHECKPOINT_FILE).read_bytes()), handed.path)
