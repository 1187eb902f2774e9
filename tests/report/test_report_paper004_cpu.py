"""The CPU-sized paper-004 studies on CIFAR-100 and miniImageNet (studies/losses_equal_
{cifar100,miniimagenet}_cpu.yaml), cut down further, run for real (Ray Tune, training, MLflow)
on data generated in each dataset's on-disk format (torchvision's cifar-100-python pickle tree;
miniImageNet's ImageFolder tree of 100 class folders), and their reports hold the paper's
Figures 1-3 with captions whose measured numbers are MLflow's."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from ncstudy.report import paper004
from ncstudy.report.cli import main as report_main

REPO = Path(__file__).resolve().parents[2]
FIGURES = {
    "paper004_fig1_nc": "Paper 004, Figure 1: NC1-NC3 against epochs",
    "paper004_fig2_accuracy": "Paper 004, Figure 2: accuracy against epochs",
    "paper004_fig3_width_epochs": "Paper 004, Figure 3: width x epochs",
}


def _class_images(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 (N, size, size, 3): a colour per class plus noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(123).integers(40, 216, (int(labels.max()) + 1, 3))
    noise = rng.normal(0, 40, (len(labels), size, size, 3))
    return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)


def write_cifar100(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """`root/cifar-100-python/{train,test,meta}` as the official archive holds them: pickled
    dicts with `data` (N x 3072 uint8, channel-major rows), `fine_labels`, `coarse_labels`,
    `filenames`, `batch_label`; meta with `fine_label_names` and `coarse_label_names`."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        labels = np.repeat(np.arange(100), n)
        pixels = _class_images(labels, 32, seed).transpose(0, 3, 1, 2).reshape(len(labels), -1)
        entry = {
            "batch_label": f"{split}ing batch 1 of 1",
            "filenames": [f"img_{i:05d}.png" for i in range(len(labels))],
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": pixels,
        }
        (folder / split).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {
        "fine_label_names": [f"fine{k:02d}" for k in range(100)],
        "coarse_label_names": [f"coarse{k:02d}" for k in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_miniimagenet(root: Path, train_per_class: int, test_per_class: int) -> Path:
    """`root/{train,test}/<wnid>/*.jpg`: 100 class folders of 84 x 84 JPEGs, the layout
    ncstudy/data/miniimagenet.py reads."""
    for split, n, seed in (("train", train_per_class, 0), ("test", test_per_class, 1)):
        labels = np.repeat(np.arange(100), n)
        images = _class_images(labels, 84, seed)
        for i, (k, img) in enumerate(zip(labels, images, strict=True)):
            folder = root / split / f"n{1000000 + k:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def accept_generated_cifar100() -> Callable[[], None]:
    """A Ray worker setup hook (a closure, so Ray ships it by value) that lets torchvision read
    generated files: its CIFAR100 checks every file against the official archive's MD5s, which
    no generated file matches; with the MD5s set to None it still checks the files exist."""

    def hook() -> None:
        from torchvision.datasets import CIFAR100  # noqa: I001  (inside the Ray worker)

        CIFAR100.train_list = [["train", None]]
        CIFAR100.test_list = [["test", None]]
        CIFAR100.meta = {**CIFAR100.meta, "md5": None}

    return hook


# study -> overrides: the shipped study at one loss, one seed, tiny subsets, 1-2 epochs (the
# same shape: a width x epochs grid of 2 x 2, best-validation test accuracy)
SHRINK = {
    "losses_equal_cifar100_cpu": {
        "dataset": {"subset_per_class": 10, "test_per_class": 2},
        "losses": [{"name": "ls", "params": {"alpha": 0.1}}],
        "grid": {"batch_size": [64], "seed": [0],
                 "axes": {"model.width": [2, 4], "train.epochs": [1, 2]}},
    },
    "losses_equal_miniimagenet_cpu": {
        "dataset": {"subset_per_class": 10, "test_per_class": 2},
        "losses": [{"name": "mse", "params": {"kappa": 1.0, "beta": 15.0}}],
        "grid": {"batch_size": [32], "seed": [0],
                 "axes": {"model.width": [4, 8], "train.epochs": [1, 2]}},
    },
    # CIFAR-10 itself: the offline JPEG copy (same images, ImageFolder layout) in its place
    "losses_equal_cifar10_cpu": {
        "dataset": {"name": "cifar10_jpeg", "download": False,
                    "subset_per_class": 10, "test_per_class": 2},
        "losses": [{"name": "focal", "params": {"gamma": 3.0}}],
        "grid": {"batch_size": [32], "seed": [0],
                 "axes": {"model.width": [2, 4], "train.epochs": [1, 2]}},
    },
}  # fmt: skip


def _cut(name: str, tmp_path: Path, root: Path) -> Path:
    """The shipped study with SHRINK's sections merged in and dataset.root pointed at `root`."""
    study = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    for section, values in SHRINK[name].items():
        study[section] = {**study[section], **values} if isinstance(values, dict) else values
    study["dataset"]["root"] = str(root)
    study["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _run(paths: list[Path], hook: Callable[[], None] | None = None) -> None:
    """The studies on one new local Ray instance (never another cluster), each worker set up
    by `hook`."""
    import ray  # noqa: I001  (Ray: only for the end-to-end test)

    from ncstudy.config import load_study
    from ncstudy.study import run_study

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="warning",
        runtime_env={
            "env_vars": {"NCSTUDY_THREADS": "1"},
            **({"worker_process_setup_hook": hook} if hook else {}),
        },
    )
    try:
        for path in paths:
            rows = run_study(load_study(path))
            assert [r.status for r in rows] == ["FINISHED"] * 4, (path.name, rows)
    finally:
        ray.shutdown()


def _widest_longest(mlf: MlflowClient, name: str) -> dict[str, float]:
    """MLflow's final metrics of the widest, longest trial (Figures 1-2's, Figure 3's corner)."""
    exp = mlf.get_experiment_by_name(name)
    runs = {
        r.data.tags["ncstudy.trial_key"]: r
        for r in mlf.search_runs([exp.experiment_id])
        if "ncstudy.trial_key" in r.data.tags
    }
    assert len(runs) == 4, sorted(runs)
    grid = SHRINK[name]["grid"]
    loss, batch = SHRINK[name]["losses"][0]["name"], grid["batch_size"][0]
    width, epochs = grid["axes"]["model.width"][-1], grid["axes"]["train.epochs"][-1]
    top = runs[f"{loss}-b{batch}-width{width}-epochs{epochs}-s0"]
    return top.data.metrics


@pytest.mark.slow
def test_cpu_studies_on_cifar100_and_miniimagenet_report_figures_1_to_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.datasets import CIFAR100

    for attr in ("train_list", "test_list", "meta"):  # restored after the test
        monkeypatch.setattr(CIFAR100, attr, getattr(CIFAR100, attr))
    accept_generated_cifar100()()  # the driver's pre-flight reads the same files
    cifar = write_cifar100(tmp_path / "cifar", train_per_class=10, test_per_class=2)
    mini = write_miniimagenet(tmp_path / "mini", train_per_class=10, test_per_class=2)
    paths = [
        _cut("losses_equal_cifar100_cpu", tmp_path, cifar),
        _cut("losses_equal_miniimagenet_cpu", tmp_path, mini),
    ]
    _run(paths, accept_generated_cifar100())
    _check_reports(
        tmp_path / "runs", ["losses_equal_cifar100_cpu", "losses_equal_miniimagenet_cpu"]
    )


@pytest.mark.slow
def test_cifar10_cpu_study_on_the_offline_copy_reports_figures_1_to_3(tmp_path: Path) -> None:
    from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip

    zip_path = shared_cifar10_zip()
    if zip_path is None or not zip_path.is_file():
        pytest.skip(f"offline CIFAR-10 zip not found at {zip_path}")
    root = extract_imagefolder_zip(zip_path, tmp_path / "cifar10", {"train": 10, "test": 2})
    _run([_cut("losses_equal_cifar10_cpu", tmp_path, root)])
    _check_reports(tmp_path / "runs", ["losses_equal_cifar10_cpu"])


def _check_reports(out: Path, names: list[str]) -> None:
    """Each study's report holds Figures 1-3, with the widest, longest trial's MLflow values."""
    mlf = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for name in names:
        loss = SHRINK[name]["losses"][0]["name"]
        assert report_main([str(out / name)]) == 0
        report = (out / name / "report" / "report.md").read_text()
        for stem, title in FIGURES.items():
            assert f"![{title}](figures/{stem}.png)" in report, (name, stem)
            assert (out / name / "report" / "figures" / f"{stem}.png").stat().st_size > 5000
        final = _widest_longest(mlf, name)
        acc = 100 * final[paper004.TEST_AT_BEST_VAL]
        assert f"final NC1 {loss} {final['nc/nc1']:.3g};" in report  # Figure 1
        assert f"test accuracy of the best-validation epoch {loss} {acc:.1f}." in report
        assert f"at the widest and longest cell {loss} {acc:.1f}" in report  # Figure 3
        assert "(widths" in report and "epochs 1, 2)" in report


# name -> (tree: train and test images per class, dataset overrides, expected per class:
# classes, train, val, test); miniImageNet at a smaller subset: 100 folders of 60 JPEGs take
# 15 s to write here
LAYOUTS = {
    "losses_equal_cifar100_cpu": ((20, 10), {}, (100, 18, 2, 10)),
    "losses_equal_miniimagenet_cpu": (
        (10, 3),
        {"subset_per_class": 10, "test_per_class": 3},
        (10, 9, 1, 3),
    ),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_shipped_cpu_studies_read_the_real_layouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The shipped study's data (no Ray) from a tree in the dataset's own layout: its class
    subset and per-class splits, 32 px inputs, and the pre-flight passes."""
    from torchvision.datasets import CIFAR100  # noqa: I001  (torchvision: only for this test)

    from ncstudy.config import load_study
    from ncstudy.data import build_data
    from ncstudy.data.preflight import check_study_data

    for attr in ("train_list", "test_list", "meta"):  # restored after the test
        monkeypatch.setattr(CIFAR100, attr, getattr(CIFAR100, attr))
    accept_generated_cifar100()()
    (n_train, n_test), over, (k, train, val, test) = LAYOUTS[name]
    writer = write_cifar100 if "cifar100" in name else write_miniimagenet
    study = yaml.safe_load((REPO / "studies" / f"{name}.yaml").read_text())
    root = writer(tmp_path / "data", n_train, n_test)
    study["dataset"] = {**study["dataset"], **over, "root": str(root)}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    spec = load_study(path)
    check_study_data(spec)
    bundle = build_data(spec.dataset, seed=0)
    assert bundle.num_classes == k and bundle.class_counts == (train,) * k
    assert (len(bundle.val), len(bundle.test)) == (k * val, k * test)
    assert np.bincount(bundle.test.targets, minlength=k).tolist() == [test] * k
    x, y = bundle.train[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < k
