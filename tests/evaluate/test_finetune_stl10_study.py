"""studies/finetune_cifar10_stl10_cpu.yaml end to end, cut down (1 epoch, a few images): the
trials start from torchvision's ResNet-18 weights (a generated file in the cache torchvision's
weights API reads, $TORCH_HOME/hub/checkpoints), train on the offline CIFAR-10 copy, and log
their accuracy on generated STL-10 files (ood/stl10/acc1), which equals the logged network's
own accuracy on those files recomputed here; the report's fine-tuning table quotes the paper
and the run, from MLflow alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from stl10_files import STL10_CLASSES, write_stl10
from torchvision import models as tvm

from ncstudy.data.class_subset import CIFAR10_CLASSES
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.data.registry import CIFAR10_STATS
from ncstudy.evaluate.ood import ood_accuracies
from ncstudy.report.cli import main as report_main
from ncstudy.trained import load_trial_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
N_STL, MAX_TEST = 60, 30


def shortened(tmp_path: Path) -> Path:
    """The CPU study on 6 + 4 images per class of the offline CIFAR-10 JPEG copy (the same
    classes), 1 epoch, 32 px."""
    study = yaml.safe_load((REPO / "studies" / "finetune_cifar10_stl10_cpu.yaml").read_text())
    assert study["model"]["init_from"] == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert study["dataset"]["download"] and study["evaluation"]["ood"][0]["download"]
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    root = extract_imagefolder_zip(
        shared_cifar10_zip(), tmp_path / "cifar", {"train": 6, "test": 4}
    )
    study["dataset"] = {"name": "cifar10_jpeg", "root": str(root), "image_size": 32}
    study["train"] |= {"epochs": 1}
    study["grid"]["batch_size"] = [20]
    ood = study["evaluation"]["ood"][0]
    ood |= {"root": str(tmp_path / "stl"), "download": False, "max_test": MAX_TEST}
    study["output_dir"] = str(tmp_path / "runs")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(path: Path, torch_home: Path) -> list:
    """The study on a new local Ray instance whose workers read TORCH_HOME's cache."""
    import ray

    from ncstudy.config import load_study
    from ncstudy.study import run_study

    env = {"NCSTUDY_THREADS": "1", "TORCH_HOME": str(torch_home)}
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": env})  # fmt: skip
    try:
        return run_study(load_study(path))
    finally:
        ray.shutdown()


def test_finetune_cpu_study_logs_ood_accuracy_and_the_report_table(tmp_path: Path) -> None:
    torch_home = tmp_path / "torch"
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    pretrained = tvm.resnet18(weights=None).state_dict()
    torch.save(pretrained, cache / Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name)
    _, labels = write_stl10(tmp_path / "stl", N_STL, seed=4)
    rows = run(shortened(tmp_path), torch_home)
    assert [r.status for r in rows] == ["FINISHED"] * 3, rows
    out = tmp_path / "runs"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlf = MlflowClient(uri)
    exp = mlf.get_experiment_by_name("finetune_cifar10_stl10_cpu")
    runs = {r.data.tags["loss"]: r for r in mlf.search_runs([exp.experiment_id])
            if "loss" in r.data.tags}  # fmt: skip
    assert set(runs) == {"ce", "normface", "cmf"}
    subset = labels[np.linspace(0, N_STL - 1, MAX_TEST).round().astype(int)]
    dropped = int((subset == STL10_CLASSES.index("monkey")).sum())
    for loss, r in runs.items():
        m = r.data.metrics
        assert m["ood/stl10/n_images"] == MAX_TEST - dropped and m["ood/stl10/n_dropped"] == dropped
        net, _ = load_trial_model(r.info.run_id, uri)
        again = ood_accuracies(
            net.encoder, net.criterion, torch.device("cpu"), [_ood_spec(tmp_path)],
            train_classes=list(CIFAR10_CLASSES), image_size=32, stats=CIFAR10_STATS,
        )  # fmt: skip
        assert m["ood/stl10/acc1"] == pytest.approx(again["ood/stl10/acc1"], abs=1e-9), loss
        # the encoder started from the cached weights: one short epoch at lr 0.01 stays near
        start, trained = pretrained["conv1.weight"], net.encoder.state_dict()["body.0.weight"]
        fresh = tvm.resnet18(weights=None).state_dict()["conv1.weight"]
        assert (trained - start).norm() < 0.2 * (fresh - start).norm(), loss
    assert report_main([str(out / "finetune_cifar10_stl10_cpu")]) == 0
    report = (out / "finetune_cifar10_stl10_cpu" / "report" / "report.md").read_text()
    assert "Fine-tuning: ID and OOD accuracy" in report
    assert "CMF 98.00% ID / 90.67% OOD against 97.00% / 87.42%" in report
    ood = 100 * runs["cmf"].data.metrics["ood/stl10/acc1"]
    assert f"cmf (tau 0.05) {100 * runs['cmf'].data.metrics['final/test_acc1']:.2f}% ID / " \
        f"{ood:.2f}% OOD" in report  # fmt: skip


def _ood_spec(tmp_path: Path):
    from ncstudy.config.ood import OODDatasetSpec  # the schema: only the recomputation uses it

    return OODDatasetSpec(name="stl10", root=str(tmp_path / "stl"), max_test=MAX_TEST)
