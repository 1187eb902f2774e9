"""Downstream evaluations over two gloo ranks give the single-process numbers on every rank."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_downstream import ArgmaxColour, MeanColour, colour_folder

from ncstudy.config import CorruptionSpec, LongTailEvalSpec, TransferSpec
from ncstudy.data.imagefolder import scan_imagefolder
from ncstudy.data.images import ImageDataset
from ncstudy.data.transforms import eval_transform
from ncstudy.evaluate.corruptions import corruption_errors
from ncstudy.evaluate.longtail import longtail_accuracies, shard_class_counts
from ncstudy.evaluate.passes import shard_loader
from ncstudy.evaluate.transfer import gather_in_order, transfer_accuracies

STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _evaluate(root: Path, rank: int, world: int) -> dict[str, float]:
    """The three evaluations on this rank's shards (same calls on every rank)."""
    cpu = torch.device("cpu")
    train_src, test_src = scan_imagefolder(root / "train"), scan_imagefolder(root / "test")
    tr = np.concatenate([np.flatnonzero(train_src.labels == k)[: 3 + 4 * k] for k in range(3)])
    plain = eval_transform(16, STATS)
    train, test = ImageDataset(train_src, tr, plain), ImageDataset(test_src, np.arange(18), plain)
    enc, crit = MeanColour(), ArgmaxColour()
    counts = shard_class_counts(shard_loader(train, rank, world, 4), 3, cpu)
    out = {f"count{k}": float(c) for k, c in enumerate(counts)}
    lt = LongTailEvalSpec(many_threshold=8, few_threshold=5)
    out |= longtail_accuracies(enc, crit, cpu, lt, shard_loader(test, rank, world, 4), counts)
    spec = TransferSpec(datasets=[{"name": "imagefolder", "root": str(root)}], epochs=5, lr=0.5)
    out |= transfer_accuracies(
        enc, crit, cpu, spec, image_size=16, stats=STATS, rank=rank, world_size=world, seed=3
    )
    x, y = gather_in_order(enc, train, rank, world, 4, cpu)
    weights = torch.arange(len(y), dtype=torch.float64)
    out["order_x"] = float((x.double().sum(1) * weights).sum())  # order-sensitive checksums
    out["order_y"] = float((y.double() * weights).sum())
    cor = CorruptionSpec(corruptions=["gaussian_noise", "contrast"], severities=[3, 5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out |= corruption_errors(enc, crit, cpu, cor, test, rank, world, 4, imagenet=False)
    return out


def _worker(rank: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save(_evaluate(Path(root), rank, 2), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path: Path) -> None:
    root = colour_folder(tmp_path / "colours", {"train": 11, "test": 6})
    single = _evaluate(root, 0, 1)
    mp.spawn(_worker, args=(_free_port(), str(root), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [single[f"count{k}"] for k in range(3)] == [3, 7, 11]  # few, medium, many
    assert single["lt/few_classes"] == single["lt/many_classes"] == 1
    for got in ranks:
        assert got.keys() == single.keys()
        for key, value in single.items():
            assert got[key] == pytest.approx(value), key
