"""STL-10 as an out-of-distribution test set (evaluation.ood): files read as torchvision reads
them, torchvision's download path, labels mapped to the training classes by name, the accuracy
of the network's own prediction rule against an independent computation, and the same numbers
from two gloo ranks as from one process."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.datasets.stl10 as tv_stl10
from stl10_files import STL10_CLASSES, write_stl10
from torchvision import transforms as T

from ncstudy.config.evaluation import EvaluationSpec
from ncstudy.config.ood import OODDatasetSpec
from ncstudy.config.sections import ModelSpec
from ncstudy.data.class_subset import CIFAR10_CLASSES
from ncstudy.data.stl10 import URL, load_stl10
from ncstudy.evaluate.ood import class_map, ood_accuracies
from ncstudy.losses import build_loss
from ncstudy.models import build_model

torch.set_num_threads(1)
STATS = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
CIFAR = list(CIFAR10_CLASSES)


def test_reader_matches_torchvision(tmp_path: Path, monkeypatch) -> None:
    images, labels = write_stl10(tmp_path, 7, seed=1)
    ours = load_stl10(str(tmp_path), "test", download=False)
    monkeypatch.setattr(tv_stl10.STL10, "_check_integrity", lambda self: True)  # no real MD5s
    theirs = tv_stl10.STL10(str(tmp_path), split="test")
    assert ours.classes == theirs.classes == list(STL10_CLASSES)
    assert list(ours.targets) == list(theirs.labels) == list(labels)
    for i in range(7):
        assert np.array_equal(np.asarray(ours[i][0]), np.asarray(theirs[i][0]))
        assert np.array_equal(np.asarray(ours[i][0]), images[i])  # HWC as written


def test_download_runs_torchvisions_download(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_download(url: str, root: str, filename: str, md5: str) -> None:
        calls.append((url, filename, md5))
        write_stl10(Path(root), 5)  # what the archive extracts to

    monkeypatch.setattr(tv_stl10, "download_and_extract_archive", fake_download)
    data = load_stl10(str(tmp_path), "test", download=True)
    assert calls == [(URL, "stl10_binary.tar.gz", tv_stl10.STL10.tgz_md5)] and len(data) == 5


def test_missing_files_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"evaluation.ood\[0\].root: STL-10 is not under"):
        load_stl10(str(tmp_path), "test", download=False, field="evaluation.ood[0].root")
    write_stl10(tmp_path, 3)
    with pytest.raises(FileNotFoundError, match="train_X.bin, train_y.bin.*download: true"):
        load_stl10(str(tmp_path), "train", download=False)


def test_class_map_by_name_alias_and_override() -> None:
    stl = list(STL10_CLASSES)
    default = class_map(stl, CIFAR, {}, "ood")
    named = dict(zip(stl, default, strict=True))
    assert named["car"] == CIFAR.index("automobile") and named["monkey"] is None
    assert [named[c] for c in ("airplane", "ship", "truck")] == [0, 8, 9]
    assert sum(t is not None for t in default) == 9  # Kumar et al.'s 9 shared classes
    over = class_map(stl, CIFAR, {"monkey": "frog", "car": None}, "ood")
    assert over[stl.index("monkey")] == CIFAR.index("frog") and over[stl.index("car")] is None
    subset = ["cat", "automobile"]  # a dataset.classes subset: labels are positions in it
    assert class_map(stl, subset, {}, "ood")[stl.index("car")] == 1
    with pytest.raises(ValueError, match=r"ood.classes: \['lion'\] are not classes of it"):
        class_map(stl, CIFAR, {"lion": "cat"}, "ood")
    with pytest.raises(ValueError, match="'tiger', which is no training class"):
        class_map(stl, CIFAR, {"cat": "tiger"}, "ood")
    with pytest.raises(ValueError, match=r"none of its classes.*map them in ood.classes"):
        class_map(stl, ["0", "1"], {}, "ood")
    with pytest.raises(ValueError, match="distinct `label`"):
        EvaluationSpec(ood=[{"name": "stl10"}, {"name": "stl10", "max_test": 3}])


def network() -> tuple[torch.nn.Module, object]:
    torch.manual_seed(3)
    encoder = build_model(ModelSpec(name="small_cnn", width=4, feature_dim=8), (3, 16, 16))
    return encoder.eval(), build_loss("ce", {}, feature_dim=8, num_classes=10, seed=3)


def evaluate(root: Path, rank: int, world: int) -> dict[str, float]:
    encoder, loss = network()
    spec = OODDatasetSpec(name="stl10", root=str(root), max_test=23)
    return ood_accuracies(
        encoder, loss, torch.device("cpu"), [spec], train_classes=CIFAR, image_size=16,
        stats=STATS, rank=rank, world_size=world, batch_size=4,
    )  # fmt: skip


def test_ood_accuracy_is_the_networks_own_prediction_rule(tmp_path: Path) -> None:
    images, labels = write_stl10(tmp_path, 40, seed=2)
    got = evaluate(tmp_path, 0, 1)
    # independently: the subset's images, monkey left out, resized, scored by the loss head
    keep = np.linspace(0, 39, 23).round().astype(int)
    keep = keep[labels[keep] != STL10_CLASSES.index("monkey")]
    to_cifar = {i: CIFAR.index("automobile" if c == "car" else c) for i, c in
                enumerate(STL10_CLASSES) if c != "monkey"}  # fmt: skip
    prep = T.Compose([T.Resize(16), T.ToTensor(), T.Normalize(*STATS)])
    x = torch.stack([prep(T.functional.to_pil_image(images[i])) for i in keep])
    encoder, loss = network()
    with torch.no_grad():
        pred = loss.scores(encoder(x)).argmax(1).numpy()
    expected = np.mean(pred == np.array([to_cifar[int(labels[i])] for i in keep]))
    assert got["ood/stl10/n_images"] == len(keep) and got["ood/stl10/n_dropped"] == 23 - len(keep)
    assert 0 < 23 - len(keep) < 23
    assert got["ood/stl10/acc1"] == pytest.approx(expected, abs=1e-12)


def _worker(rank: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save(evaluate(Path(root), rank, 2), Path(out) / f"ood_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    write_stl10(tmp_path, 40, seed=2)
    single = evaluate(tmp_path, 0, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"ood_rank{rank}.pt") == single
