"""Downstream evaluations (issue #9): transfer probes, long-tail groups, corruption robustness."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset

from ncstudy.config import CORRUPTIONS, CorruptionSpec, SpecError, TransferSpec, expand, parse_study
from ncstudy.context import LocalContext
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.data.images import ImageDataset, ImageSource
from ncstudy.evaluate.corruptions import (
    ALEXNET_ERR,
    CorruptedDataset,
    corrupt_image,
    corruption_errors,
    mean_corruption_error,
)
from ncstudy.evaluate.longtail import class_groups, group_accuracies, shard_class_counts
from ncstudy.evaluate.passes import shard_loader
from ncstudy.evaluate.transfer import (
    mean_average_precision,
    transfer_accuracies,
    voc07_average_precision,
)
from ncstudy.train import train_loop

torch.set_num_threads(1)  # tiny probes and images: threads only add overhead

COLOURS = ((220, 30, 30), (30, 200, 40), (40, 40, 230))
# Severity steps where the benchmark's own parameters (imagecorruptions 1.1.2 = Hendrycks &
# Dietterich's ImageNet-C values) are not ordered by strength; measured on 10 real CIFAR-10
# images (and the same at 224 px, so not an artefact of the small images):
# - glass_blur s3 -> s4: (sigma, max_delta, iterations) (1, 2, 3) -> (1.1, 3, 2), one pass
#   fewer: both distortion measures drop (mean abs diff -1.6, 1-SSIM -0.04);
# - frost s3 -> s4: image weight 0.70 -> 0.65 at the same frost weight 0.70: the image only
#   darkens a little under the same overlay; mean abs diff drops (-3.8), 1-SSIM is flat;
# - snow s2 -> s3: the same whitening (0.7) with fewer but larger, more blurred flakes: flat in
#   both measures (within +-2.5 of mean abs diff and +-0.02 of 1-SSIM).
# Every other step of every corruption grows in 1-SSIM, averaged over the images.
FLAT_STEPS = {("glass_blur", 3), ("frost", 3), ("snow", 2)}  # (corruption, from severity)


def colour_folder(
    root: Path, per_class: dict[str, int], size: int = 16, colours: tuple = COLOURS
) -> Path:
    """A synthetic ImageFolder: class k is noisy images of colour k (linearly separable means)."""
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for k, colour in enumerate(colours):
            (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                noise = rng.normal(0, 20, (size, size, 3))
                img = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / f"c{k}" / f"{i}.png")
    return root


class MeanColour(nn.Module):
    """A frozen 'encoder': the mean of each channel (3 features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class ArgmaxColour:
    """A 'loss' whose prediction rule is the brightest channel (scores = features)."""

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h


def test_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="unknown downstream dataset 'imagenet_x'"):
        TransferSpec(datasets=[{"name": "imagenet_x"}])
    with pytest.raises(ValueError, match="root: the imagefolder downstream dataset needs root"):
        TransferSpec(datasets=[{"name": "imagefolder"}])
    with pytest.raises(ValueError, match="unknown corruption"):
        CorruptionSpec(corruptions=["rain"])
    with pytest.raises(ValueError, match="severities"):
        CorruptionSpec(severities=[0, 6])
    study = {"name": "s", "losses": [{"name": "ce"}]}
    with pytest.raises(SpecError, match="evaluation.longtail: Value error|few_threshold"):
        parse_study({**study, "evaluation": {"longtail": {"many_threshold": 10}}})
    assert CorruptionSpec().corruptions == list(CORRUPTIONS) and len(CORRUPTIONS) == 15


def test_linear_probe_transfer_separates_separable_features(tmp_path: Path) -> None:
    root = colour_folder(tmp_path / "colours", {"train": 12, "test": 6})
    other = colour_folder(tmp_path / "shades", {"train": 6, "val": 3})
    datasets = [
        {"name": "imagefolder", "root": str(root)},  # metric name: the folder's, "colours"
        {"name": "imagefolder", "root": str(other), "label": "shades_val"},
        {"name": "food101", "root": str(root)},  # a named dataset given as an ImageFolder tree
    ]
    spec = TransferSpec(datasets=datasets, epochs=60, lr=0.5, batch_size=16)
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    out = transfer_accuracies(
        MeanColour(), None, torch.device("cpu"), spec, image_size=16, stats=stats
    )
    keys = ["transfer/colours/acc1", "transfer/shades_val/acc1", "transfer/food101/acc1"]
    assert sorted(out) == sorted([*keys, "transfer/mean_acc1"])
    for key in keys:  # three well-separated colour means
        assert out[key] == 1.0
    assert out["transfer/mean_acc1"] == 1.0
    with pytest.raises(ValueError, match=r"datasets\[1\]: its metrics would be transfer/colours"):
        TransferSpec(datasets=[datasets[0], {"name": "imagefolder", "root": str(root) + "/"}])
    with pytest.raises(ValueError, match="give each a distinct `label`"):
        TransferSpec(datasets=[{"name": "dtd"}, {"name": "imagefolder", "root": "/x/dtd"}])


def test_mean_average_precision_is_voc2007s_11_point_ap() -> None:
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    # class 0: ranking 0.9(+), 0.8(-), 0.3(+), 0.1(-): precision 1 up to recall 0.5, then 2/3
    #   at recall 1 -> 11-point AP = (6 x 1 + 5 x 2/3) / 11 (sklearn's AP would be 5/6)
    # class 1: ranking 0.9(-), 0.7(+), ...: best precision 1/2 at every recall level -> 1/2
    ap0, ap1 = (6 + 5 * 2 / 3) / 11, 0.5
    assert voc07_average_precision(scores[:, 0], targets[:, 0]) == pytest.approx(ap0)
    assert mean_average_precision(scores, targets) == pytest.approx((ap0 + ap1) / 2)
    # a difficult (-1) image is ignored: neither a hit nor a false alarm, even if top-ranked
    hard = np.concatenate([targets, [[-1, -1]]]), np.concatenate([scores, [[0.95, 0.95]]])
    assert mean_average_precision(hard[1], hard[0]) == pytest.approx((ap0 + ap1) / 2)
    # a class without positives (VOC: absent from a small test subset) is left out of the mean
    none = np.zeros((4, 1)), np.array([[0.5], [0.1], [0.9], [0.3]])
    three = np.concatenate([targets, none[0]], 1), np.concatenate([scores, none[1]], 1)
    assert mean_average_precision(three[1], three[0]) == pytest.approx((ap0 + ap1) / 2)


VOC_XML = """<annotation><filename>{name}.jpg</filename>{objects}</annotation>"""
VOC_OBJECT = "<object><name>{cls}</name><difficult>{difficult}</difficult></object>"


def voc_folder(root: Path, images: dict[str, dict[str, list[tuple[str, int]]]]) -> Path:
    """A VOC2007 devkit layout (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt) with
    {split: {image id: [(class, difficult), ...]}}, as torchvision's VOCDetection reads it."""
    voc = root / "VOCdevkit" / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, items in images.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(items) + "\n")
        for name, objects in items.items():
            pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg")
            body = "".join(VOC_OBJECT.format(cls=c, difficult=d) for c, d in objects)
            (voc / "Annotations" / f"{name}.xml").write_text(
                VOC_XML.format(name=name, objects=body)
            )
    return root


def test_voc2007_targets_ignore_difficult_objects(tmp_path: Path) -> None:
    from ncstudy.config import DownstreamDatasetSpec
    from ncstudy.evaluate.transfer import VOC_CLASSES, downstream_splits

    root = voc_folder(
        tmp_path,
        {
            "trainval": {"000001": [("dog", 0), ("person", 1)], "000002": [("cat", 0)]},
            "test": {
                "000003": [("dog", 1), ("dog", 0), ("car", 1)],  # dog: one easy one counts
                "000004": [("person", 0), ("person", 1)],
            },
        },
    )
    ds = DownstreamDatasetSpec(name="voc2007", root=str(root))
    train, test, k, multilabel = downstream_splits(ds, 8, ((0.5,) * 3, (0.25,) * 3))
    assert (k, multilabel, len(train), len(test)) == (20, True, 2, 2)
    idx = {c: i for i, c in enumerate(VOC_CLASSES)}

    def expected(labels: dict[str, float]) -> torch.Tensor:
        t = torch.zeros(20)
        for c, v in labels.items():
            t[idx[c]] = v
        return t

    x, y = train[0]
    assert x.shape == (3, 8, 8)
    assert torch.equal(y, expected({"dog": 1, "person": -1}))  # difficult only: ignored
    assert torch.equal(test[0][1], expected({"dog": 1, "car": -1}))
    assert torch.equal(test[1][1], expected({"person": 1}))


def test_longtail_groups_come_from_training_counts() -> None:
    counts = [150, 101, 100, 50, 20, 19, 5]
    groups = class_groups(counts, many=100, few=20)
    assert groups == {"many": [0, 1], "medium": [2, 3, 4], "few": [5, 6]}
    correct = np.array([10, 8, 5, 4, 3, 1, 0], dtype=float)
    count = np.array([10, 10, 10, 10, 10, 10, 10], dtype=float)
    out = group_accuracies(correct, count, counts, 100, 20)
    assert out["lt/acc1"] == pytest.approx(31 / 70)
    assert out["lt/many_acc1"] == pytest.approx((1.0 + 0.8) / 2)
    assert out["lt/medium_acc1"] == pytest.approx((0.5 + 0.4 + 0.3) / 3)
    assert out["lt/few_acc1"] == pytest.approx((0.1 + 0.0) / 2)
    assert out["lt/few_classes"] == 2


def test_class_counts_from_sharded_labels_without_decoding() -> None:
    labels = np.array([0] * 7 + [1] * 3 + [2] * 1)
    source = ImageSource(["missing.png"] * len(labels), labels, ["a", "b", "c"])
    data = ImageDataset(source, np.arange(len(labels)), None)
    loader = shard_loader(data, 0, 1, 4)
    assert shard_class_counts(loader, 3, torch.device("cpu")) == [7, 3, 1]


@pytest.fixture(scope="module")
def real_images() -> list[np.ndarray]:
    """One test image per class of the offline CIFAR-10 copy (read from the zip directly)."""
    import io
    import zipfile

    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    with zipfile.ZipFile(shared_cifar10_zip()) as zf:
        names = sorted(n for n in zf.namelist() if "/test/" in n and n.endswith(".jpg"))
        return [
            np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("RGB")) for n in names[::1000]
        ]


def distortions(clean: np.ndarray, name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean absolute difference, 1 - SSIM) of severities 1..5 against the clean image; the
    same seed at every severity, so the random parts (noise, frost picture, flakes) are paired."""
    from skimage.metrics import structural_similarity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = [corrupt_image(clean, name, s, seed=seed) for s in range(1, 6)]
    mad = [np.abs(o.astype(float) - clean).mean() for o in outs]
    dssim = [1 - structural_similarity(o, clean, channel_axis=-1, data_range=255) for o in outs]
    return np.asarray(mad), np.asarray(dssim)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_changes_the_image_and_grows_with_severity(
    name: str, real_images: list[np.ndarray]
) -> None:
    img = real_images[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = corrupt_image(img, name, 3, seed=1)
        assert np.array_equal(again, corrupt_image(img, name, 3, seed=1))  # seeded
    assert again.shape == img.shape and again.dtype == np.uint8
    both = np.stack([np.stack(distortions(im, name, seed=i)) for i, im in enumerate(real_images)])
    mad, dssim = both.mean(axis=0)  # means over the 10 images, per severity
    assert mad.min() > 2.0 and dssim.min() > 0.01, (mad, dssim)  # every severity changes it
    assert dssim[4] > dssim[0] + 0.05 and mad[4] > mad[0]  # severity 5 is far worse than 1
    for s in range(1, 5):  # the step from severity s to s + 1
        step_mad, step_dssim = mad[s] - mad[s - 1], dssim[s] - dssim[s - 1]
        if (name, s) not in FLAT_STEPS:
            assert step_dssim > 0, (s, dssim)
        elif name == "glass_blur":  # fewer iterations at s4: less distortion in both measures
            assert step_mad < 0 and step_dssim < 0, (mad, dssim)
        elif name == "frost":  # the image darkens under the same overlay
            assert step_mad < 0 and abs(step_dssim) < 0.02, (mad, dssim)
        else:  # snow: flat
            assert abs(step_mad) < 5 and abs(step_dssim) < 0.03, (mad, dssim)


def test_mce_reproduces_a_hand_computation() -> None:
    errors = {"gaussian_noise": 0.443214, "brightness": 0.282296}  # half AlexNet's
    assert mean_corruption_error(errors, ALEXNET_ERR) == pytest.approx(0.5)
    errors = {"contrast": 0.6, "pixelate": 0.3}
    hand = (0.6 / 0.853204 + 0.3 / 0.717840) / 2
    assert mean_corruption_error(errors, ALEXNET_ERR) == pytest.approx(hand)


def colour_test_set(root: Path, size: int = 16, resize: int | None = None) -> ImageDataset:
    from ncstudy.data.imagefolder import scan_imagefolder
    from ncstudy.data.transforms import eval_transform

    src = scan_imagefolder(root / "test")
    plain = eval_transform(size, ((0,) * 3, (1,) * 3), resize)
    return ImageDataset(src, np.arange(len(src.labels)), plain)


def test_corruption_errors_of_a_colour_rule(tmp_path: Path) -> None:
    test = colour_test_set(colour_folder(tmp_path / "c", {"test": 4}))
    spec = CorruptionSpec(corruptions=["brightness", "gaussian_noise"], severities=[1, 5])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = corruption_errors(
            MeanColour(), ArgmaxColour(), torch.device("cpu"), spec, test, 0, 1, 8, imagenet=True
        )
    for name in spec.corruptions:
        per = [out[f"corruption/{name}/s{s}/err"] for s in (1, 5)]
        assert all(0.0 <= e <= 1.0 for e in per)
        assert out[f"corruption/{name}/err"] == pytest.approx(np.mean(per))
    means = [out[f"corruption/{n}/err"] for n in spec.corruptions]
    assert out["corruption/mean_err"] == pytest.approx(np.mean(means))
    # 2 corruptions x 2 severities: AlexNet's errors average all 15 x 5, so no mCE (and a note)
    assert "corruption/mce" not in out
    assert any("corruption/mce not logged" in str(w.message) for w in caught)
    # mild brightness keeps the dominant colour: the rule stays right
    assert out["corruption/brightness/s1/err"] == 0.0
    sub = CorruptedDataset(test, np.arange(3), "contrast", 5, 0)
    assert len(sub) == 3 and sub[0][0].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="no raw images"):
        CorruptedDataset(Subset(test, [0]), np.arange(1), "contrast", 1, 0)


def test_mce_over_the_full_benchmark_is_the_hand_computation(tmp_path: Path) -> None:
    faint = ((128, 120, 120), (120, 128, 120), (120, 120, 128))  # corruptions can flip these
    test = colour_test_set(colour_folder(tmp_path / "c", {"test": 2}, colours=faint))
    spec = CorruptionSpec()  # all 15 corruptions x 5 severities
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = corruption_errors(
            MeanColour(), ArgmaxColour(), torch.device("cpu"), spec, test, 0, 1, 8, imagenet=True
        )
    per = {c: np.mean([out[f"corruption/{c}/s{s}/err"] for s in range(1, 6)]) for c in CORRUPTIONS}
    assert out["corruption/mce"] == pytest.approx(np.mean([per[c] / ALEXNET_ERR[c] for c in per]))
    assert out["corruption/mce"] > 0 and len(set(per.values())) > 2  # not a trivial all-zero case


def test_corruptions_hit_the_network_input_not_the_raw_image(tmp_path: Path) -> None:
    from torchvision import transforms as T

    # 40 px images, evaluated as ImageNet is: resize the short side to 20, centre crop 16
    test = colour_test_set(colour_folder(tmp_path / "c", {"test": 2}, size=40), 16, resize=20)
    raw = test.load(1)
    crop = T.Compose([T.Resize(20), T.CenterCrop(16)])
    finish = T.Compose([T.ToTensor(), T.Normalize((0,) * 3, (1,) * 3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x, y = CorruptedDataset(test, np.arange(2), "pixelate", 5, 0)[1]  # deterministic
        first_crop = finish(Image.fromarray(corrupt_image(np.asarray(crop(raw)), "pixelate", 5, 0)))
        first_corrupt = finish(
            crop(Image.fromarray(corrupt_image(np.asarray(raw), "pixelate", 5, 0)))
        )
    assert y == test.targets[1] and x.shape == (3, 16, 16)
    assert torch.equal(x, first_crop)  # ImageNet-C: corrupt the 224 (here 16) px crop
    assert not torch.allclose(x, first_corrupt, atol=0.02)  # the old order differs


def test_imagenet_c_folder_must_have_the_training_classes(tmp_path: Path) -> None:
    test = colour_test_set(colour_folder(tmp_path / "c", {"test": 2}), 16, resize=20)
    inc = tmp_path / "inc"
    colour_folder(inc / "fog", {"3": 2})  # fog/3/c0..c2: the training classes
    spec = CorruptionSpec(corruptions=["fog"], severities=[3], imagenet_c_root=str(inc))
    out = corruption_errors(
        MeanColour(), ArgmaxColour(), torch.device("cpu"), spec, test, 0, 1, 8, imagenet=False
    )
    assert out["corruption/fog/s3/err"] == 0.0  # the stored images are clean colours
    from ncstudy.evaluate.corruptions import imagenet_c_dataset, imagenet_c_transform

    # stored at the input size: centre crop (a no-op) and normalise, no resize to 20 first
    data = imagenet_c_dataset(inc, "fog", 3, imagenet_c_transform(test.transform))
    stored = np.asarray(data.load(0), dtype=np.float32) / 255
    assert torch.allclose(data[0][0], torch.from_numpy(stored.transpose(2, 0, 1)))
    (inc / "fog" / "3" / "c2").rename(inc / "fog" / "3" / "n01440764")
    with pytest.raises(ValueError, match=r"imagenet_c_root: .*fog/3 has 3 class folders.*c2"):
        corruption_errors(
            MeanColour(), ArgmaxColour(), torch.device("cpu"), spec, test, 0, 1, 8, imagenet=False
        )


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    root = tmp_path_factory.mktemp("cifar_dl")
    return extract_imagefolder_zip(shared_cifar10_zip(), root, {"train": 12, "test": 4})


def test_train_loop_logs_downstream_metrics(
    cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ncstudy.runlog import RunLogger

    logged: list[dict] = []
    monkeypatch.setattr(RunLogger, "log", lambda logger, m, epoch: logged.append(dict(m)))
    study = {
        "name": "downstream",
        "dataset": {
            "name": "cifar10_jpeg_lt",
            "root": str(cifar_root),
            "imbalance_ratio": 0.25,
            "val_fraction": 0.1,
        },
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 8},
        "train": {"epochs": 2, "lr": 0.1, "warmup_epochs": 0},
        "losses": [{"name": "ce"}],
        "grid": {"temperature": [0.1], "batch_size": [16]},
        "evaluation": {
            "nc_metrics": False,
            "longtail": {"many_threshold": 8, "few_threshold": 5},
            "transfer": {
                "datasets": [{"name": "cifar10_jpeg", "root": str(cifar_root), "max_train": 60}],
                "epochs": 3,
            },
            "corruptions": {
                "corruptions": ["fog", "pixelate"],
                "severities": [1, 5],
                "max_images": 6,
            },
        },
    }
    trial = expand(parse_study(study))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_loop(trial, LocalContext())
    first, last = logged
    assert last["status"] == "finished"
    assert not any(k.startswith(("transfer/", "lt/", "corruption/")) for k in first)  # final only
    assert 0.0 <= last["transfer/cifar10_jpeg/acc1"] <= 1.0
    assert last["transfer/mean_acc1"] == last["transfer/cifar10_jpeg/acc1"]
    # imbalance 0.25 on 10-11 training images per class: many > 8, few < 5 (the counts decide)
    for g in ("many", "medium", "few"):
        assert f"lt/{g}_acc1" in last
    assert last["lt/acc1"] == pytest.approx(last["test/acc1"])  # same rule, same test set
    for name in ("fog", "pixelate"):
        for s in (1, 5):
            assert 0.0 <= last[f"corruption/{name}/s{s}/err"] <= 1.0
    assert "corruption/mean_err" in last and "corruption/mce" not in last  # not ImageNet
