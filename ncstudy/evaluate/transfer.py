"""Linear transfer (Khosla et al. 2020, the source paper's Table 4): a linear probe trained on the
frozen encoder's features of each downstream dataset; top-1 accuracy on its test split.

VOC2007 is evaluated as multi-label classification (20 classes, one-vs-rest logistic probe), not
detection, with the VOC2007 classification protocol: objects marked difficult are ignored (an
image whose only objects of a class are difficult counts neither as a positive nor as a negative
of that class, in training and in scoring) and AP is the 11-point interpolated AP of the VOC2007
devkit, averaged over the 20 classes (mAP).
Datasets are torchvision's (downloaded when `download` is set) or ImageFolder trees
(`root/train/<class>/*`, `root/test|val/<class>/*`): `imagefolder`, `cifar10_jpeg`, and any named
dataset whose root holds that layout. Metrics are keyed by the dataset's `key` (its `label`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision import transforms as T

from ncstudy.data import transforms as tf
from ncstudy.data.imagefolder import (
    TEST_SPLITS,
    cifar10_jpeg_root,
    scan_imagefolder,
    test_split_dir,
)
from ncstudy.data.images import ImageDataset
from ncstudy.evaluate.corruptions import evenly_spaced
from ncstudy.evaluate.passes import gather_features, shard_loader
from ncstudy.evaluate.probes import probe_accuracy, train_linear_probe

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
# name -> the folder torchvision's class expects under root (what `download` creates)
TORCHVISION_FOLDERS = {
    "food101": "food-101",
    "cifar10": "cifar-10-batches-py",
    "cifar100": "cifar-100-python",
    "stanford_cars": "stanford_cars",
    "dtd": "dtd/dtd",
    "oxford_pets": "oxford-iiit-pet",
    "flowers102": "flowers-102",
    "voc2007": "VOCdevkit/VOC2007",
}
# name -> (torchvision class, train kwargs, test kwargs)
_TORCHVISION = {
    "food101": ("Food101", {"split": "train"}, {"split": "test"}),
    "cifar10": ("CIFAR10", {"train": True}, {"train": False}),
    "cifar100": ("CIFAR100", {"train": True}, {"train": False}),
    "stanford_cars": ("StanfordCars", {"split": "train"}, {"split": "test"}),
    "dtd": ("DTD", {"split": "train"}, {"split": "test"}),
    "oxford_pets": ("OxfordIIITPet", {"split": "trainval"}, {"split": "test"}),
    "flowers102": ("Flowers102", {"split": "train"}, {"split": "test"}),
}


def voc_target(annotation: dict[str, Any]) -> torch.Tensor:
    """The VOC2007 classification target of one image from its parsed XML: per class 1 (a
    non-difficult object of the class), -1 (only difficult ones: ignored) or 0 (none)."""
    objects = annotation["annotation"].get("object", [])
    target = torch.zeros(len(VOC_CLASSES))
    for obj in objects if isinstance(objects, list) else [objects]:
        k = VOC_CLASSES.index(obj["name"])
        if str(obj.get("difficult", "0")).strip() == "1":
            target[k] = target[k] if target[k] == 1 else -1.0
        else:
            target[k] = 1.0
    return target


class _VOCMultiLabel(Dataset):
    """VOC2007 images with their classification targets (`voc_target`: 1, 0 or -1 = ignore)."""

    def __init__(self, voc: Any):
        self.voc = voc

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, ann = self.voc[i]
        return x, voc_target(ann)


def downstream_root(ds: Any) -> Path:
    """Where a DownstreamDatasetSpec's files are: `root`, else ~/.cache/ncstudy/downstream/<name>
    (the cifar10_jpeg copy: `data.imagefolder.cifar10_jpeg_root`)."""
    if ds.name == "cifar10_jpeg":
        return cifar10_jpeg_root(ds)
    return Path(ds.root or Path.home() / ".cache" / "ncstudy" / "downstream" / ds.name).expanduser()


def is_imagefolder_tree(root: Path) -> bool:
    """Whether `root` holds train/ and test/ (or val/): an ImageFolder copy of a dataset."""
    return (root / "train").is_dir() and any((root / s).is_dir() for s in TEST_SPLITS)


def reads_as_imagefolder(ds: Any, root: Path) -> bool:
    """imagefolder and cifar10_jpeg always; a named dataset (not VOC2007, which is multi-label)
    when its root holds an ImageFolder tree instead of torchvision's files."""
    if ds.name in ("imagefolder", "cifar10_jpeg"):
        return True
    return ds.name != "voc2007" and ds.root is not None and is_imagefolder_tree(root)


def downstream_splits(ds: Any, size: int, stats: tf.Stats) -> tuple[Dataset, Dataset, int, bool]:
    """(train, test, num_classes, multilabel) of a DownstreamDatasetSpec, eval preprocessing
    (resize the short side, centre crop to `size`, normalise with `stats`)."""
    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(*stats)])
    root = downstream_root(ds)
    if reads_as_imagefolder(ds, root):
        train, test = scan_imagefolder(root / "train"), scan_imagefolder(test_split_dir(root))
        if train.classes != test.classes:
            raise ValueError(f"transfer.datasets.root: {root}: train/ and test/ classes differ")
        make = lambda s: ImageDataset(s, np.arange(len(s.labels)), transform)  # noqa: E731
        return make(train), make(test), len(train.classes), False
    try:
        if ds.name == "voc2007":
            kw = {"root": str(root), "year": "2007", "download": ds.download}
            train = _VOCMultiLabel(
                tvd.VOCDetection(image_set="trainval", transform=transform, **kw)
            )
            test = _VOCMultiLabel(tvd.VOCDetection(image_set="test", transform=transform, **kw))
            return train, test, len(VOC_CLASSES), True
        cls_name, train_kw, test_kw = _TORCHVISION[ds.name]
        cls = getattr(tvd, cls_name)
        kw = {"root": str(root), "transform": transform, "download": ds.download}
        train, test = cls(**train_kw, **kw), cls(**test_kw, **kw)
    except RuntimeError as err:  # torchvision: "Dataset not found ... download=True"
        raise FileNotFoundError(
            f"transfer.datasets: {ds.name} is not under {root} ({err}); set its root to "
            f"torchvision's files ({TORCHVISION_FOLDERS[ds.name]}/) or to an ImageFolder tree "
            "(train/<class>/*, test/<class>/*), or download: true where online"
        ) from None
    num_classes = len(getattr(train, "classes", [])) or int(max(_labels(train))) + 1
    return train, test, num_classes, False


def _labels(data: Any) -> list[int]:
    for attr in ("targets", "_labels", "_samples"):
        if hasattr(data, attr):
            values = getattr(data, attr)
            return [v[1] if isinstance(v, tuple) else int(v) for v in values]
    return [int(y) for _, y in data]


def train_multilabel_probe(
    features: torch.Tensor, targets: torch.Tensor, *, epochs: int, lr: float, momentum: float,
    weight_decay: float, batch_size: int, seed: int,
) -> nn.Module:  # fmt: skip
    """One-vs-rest logistic regression (a linear layer + BCE) on frozen features; targets of -1
    (VOC's difficult-only labels) are left out of the loss."""
    gen = torch.Generator().manual_seed(seed)
    known = (targets >= 0).float()
    targets = targets.clamp(min=0)
    probe = nn.Linear(features.shape[1], targets.shape[1])
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=gen)
        probe.bias.zero_()
    opt = torch.optim.SGD(probe.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=gen)
        for start in range(0, len(features), batch_size):
            idx = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(
                probe(features[idx]), targets[idx], weight=known[idx], reduction="sum"
            ) / known[idx].sum().clamp(min=1.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe.eval()


def voc07_average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """The VOC2007 devkit's 11-point interpolated AP of one class: the mean over recall levels
    t = 0, 0.1, ..., 1 of the best precision at recall >= t; targets of -1 (difficult) are
    ignored, i.e. neither true nor false positives."""
    keep = target >= 0
    scores, positive = scores[keep], target[keep] > 0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    recall = tp / max(int(positive.sum()), 1)
    precision = tp / np.maximum(tp + fp, 1)
    levels = np.linspace(0.0, 1.0, 11)
    return float(np.mean([precision[recall >= t].max(initial=0.0) for t in levels]))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """VOC2007 mAP: the mean over classes with a positive of the 11-point interpolated AP."""
    present = [k for k in range(targets.shape[1]) if (targets[:, k] > 0).any()]
    return float(np.mean([voc07_average_precision(scores[:, k], targets[:, k]) for k in present]))


def gather_in_order(
    encoder: nn.Module, data: Dataset, rank: int, world_size: int, batch_size: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of all of `data`, in dataset order on every rank (the ranks' shards
    `r::world_size` are gathered, then un-interleaved): probes do not depend on the world size."""
    x, y = gather_features(encoder, shard_loader(data, rank, world_size, batch_size), device)
    n = len(data)  # type: ignore[arg-type]
    position = torch.cat([torch.arange(r, n, world_size) for r in range(world_size)])
    order = torch.argsort(position)
    return x[order], y[order]


def transfer_accuracies(
    encoder: nn.Module,
    criterion: Any,
    device: torch.device,
    spec: Any,
    *,
    image_size: int,
    stats: tf.Stats,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """`transfer/<key>/acc1` (VOC2007: `transfer/<key>/map`, counted in the mean) and
    `transfer/mean_acc1` for a TransferSpec (`key`: the dataset's label, default its name).
    Features of each rank's shard are gathered on every rank, which then trains the same probe
    from the same seed (identical results, identical collective calls). `criterion` is unused:
    the probe replaces the loss's classifier."""
    del criterion
    out: dict[str, float] = {}
    scores = []
    for ds in spec.datasets:
        train, test, num_classes, multilabel = downstream_splits(ds, image_size, stats)
        train = Subset(train, evenly_spaced(len(train), ds.max_train).tolist())
        test = Subset(test, evenly_spaced(len(test), ds.max_test).tolist())
        tr_x, tr_y = gather_in_order(encoder, train, rank, world_size, batch_size, device)
        te_x, te_y = gather_in_order(encoder, test, rank, world_size, batch_size, device)
        recipe = dict(
            epochs=spec.epochs, lr=spec.lr, momentum=spec.momentum,
            weight_decay=spec.weight_decay, batch_size=spec.batch_size, seed=seed,
        )  # fmt: skip
        if multilabel:
            probe = train_multilabel_probe(tr_x, tr_y.float(), **recipe)
            with torch.no_grad():
                value = mean_average_precision(probe(te_x).numpy(), te_y.numpy())
            out[f"transfer/{ds.key}/map"] = value
        else:
            probe = train_linear_probe(tr_x, tr_y, num_classes, normalized=False, **recipe)
            value = probe_accuracy(probe, te_x, te_y)
            out[f"transfer/{ds.key}/acc1"] = value
        scores.append(value)
    out["transfer/mean_acc1"] = float(np.mean(scores))
    return out
