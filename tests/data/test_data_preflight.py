"""Pre-flight data checks: every bad data path of a study stops `ncstudy.run` with exit code 2
and a message naming the field, before Ray starts and before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ncstudy.config import parse_study
from ncstudy.data import ffcv_loader
from ncstudy.data.preflight import check_study_data
from ncstudy.run import main


def image_tree(root: Path, classes: dict[str, list[str]], size: int = 8) -> Path:
    """An ImageFolder tree: {split: [class, ...]}, one PNG per class."""
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(root / split / name / "0.png")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return image_tree(tmp_path / "tree", {"train": ["a", "b"], "test": ["a", "b"]})


def run_study_file(tmp_path: Path, capsys: pytest.CaptureFixture, **sections: object) -> str:
    """Run `python -m ncstudy.run` on a small study; assert exit 2 and nothing written."""
    study = {"name": "pf", "losses": [{"name": "ce"}], "model": {"name": "small_cnn"}, **sections}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "runs"
    assert main([str(path), "--output", str(out)]) == 2
    assert not out.exists()  # nothing written: Ray and MLflow never started
    return capsys.readouterr().err


def test_cifar_root_without_download(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = run_study_file(tmp_path, capsys, dataset={"name": "cifar10", "root": str(tmp_path)})
    assert "dataset.root (cifar10)" in err and "cifar-10-batches-py/ not found" in err
    assert "dataset.download: true" in err and "cifar-10-python.tar.gz" in err  # the fix
    # grid axes may change the dataset: the CIFAR-100 trials are checked as well
    (tmp_path / "cifar-10-batches-py").mkdir()
    err = run_study_file(
        tmp_path,
        capsys,
        dataset={"name": "cifar10", "root": str(tmp_path)},
        grid={"axes": {"dataset.name": ["cifar10", "cifar100"]}},
    )
    assert "dataset.root (cifar100)" in err and "cifar-100-python" in err


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ({"train": ["a", "b"]}, "has neither val/ nor test/"),
        ({"train": ["a", "b"], "val": ["a", "c"]}, "train/ and val/ have different classes"),
    ],
)
def test_imagefolder_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture, layout: dict, expected: str
) -> None:
    root = image_tree(tmp_path / "tree", layout)
    err = run_study_file(tmp_path, capsys, dataset={"name": "imagefolder", "root": str(root)})
    assert "dataset.root (imagefolder)" in err and expected in err


def test_imagenet_root_and_class_count(
    tmp_path: Path, capsys: pytest.CaptureFixture, tree: Path
) -> None:
    missing = str(tmp_path / "nowhere")
    err = run_study_file(tmp_path, capsys, dataset={"name": "imagenet", "root": missing})
    assert "dataset.root (imagenet)" in err and "does not exist" in err
    err = run_study_file(tmp_path, capsys, dataset={"name": "imagenet100", "root": str(tree)})
    assert "has 2 class folders, imagenet100 has 100" in err


def test_cifar10_jpeg_zip(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no extracted copy in the cache
    monkeypatch.setenv("NCSTUDY_CIFAR10_ZIP", str(tmp_path / "missing.zip"))
    err = run_study_file(tmp_path, capsys, dataset={"name": "cifar10_jpeg"})
    assert "dataset.root (cifar10_jpeg)" in err and "missing.zip" in err
    assert "NCSTUDY_CIFAR10_ZIP" in err


def test_beton_files(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tree: Path
) -> None:
    # with or without the extra installed: the check is the file's existence
    monkeypatch.setattr(ffcv_loader, "ffcv_installed", lambda: True)
    monkeypatch.setattr(ffcv_loader, "require_ffcv", lambda import_it=True: None)
    dataset = {"name": "imagefolder", "root": str(tree), "loader": "ffcv", "beton_dir": "/b"}
    err = run_study_file(tmp_path, capsys, dataset=dataset)
    assert "dataset.beton_dir (imagefolder)" in err and "/b/imagefolder_train.beton" in err
    assert "python -m data_prep.write_beton --dataset imagefolder" in err


def test_transfer_roots(tmp_path: Path, capsys: pytest.CaptureFixture, tree: Path) -> None:
    dataset = {"name": "imagefolder", "root": str(tree)}
    transfer = {"datasets": [{"name": "imagefolder", "root": str(tree)}, {"name": "dtd"}]}
    # the 2-image tree holds one batch of 2 (the pre-flight checks batch sizes too)
    study = {
        "name": "t",
        "losses": [{"name": "ce"}],
        "dataset": dataset,
        "grid": {"batch_size": [2]},
    }
    nowhere = str(tmp_path / "nowhere")
    err = run_study_file(
        tmp_path,
        capsys,
        dataset=dataset,
        evaluation={"transfer": {"datasets": [{"name": "dtd", "root": nowhere}]}},
    )
    assert "evaluation.transfer.datasets[0].root (dtd)" in err
    assert "torchvision's files (dtd/dtd/)" in err and "ImageFolder tree" in err
    # torchvision's layout, an ImageFolder copy of a named dataset, or download: all accepted
    (tmp_path / "dtd_tv" / "dtd" / "dtd").mkdir(parents=True)
    ok = [
        {"name": "dtd", "root": str(tmp_path / "dtd_tv")},
        {"name": "food101", "root": str(tree)},
        {"name": "flowers102", "root": nowhere, "download": True},
    ]
    check_study_data(parse_study({**study, "evaluation": {"transfer": {"datasets": ok}}}))
    voc = {"name": "voc2007", "root": str(tree)}
    bad = {"transfer": {"datasets": [transfer["datasets"][0], voc]}}
    err = run_study_file(tmp_path, capsys, dataset=dataset, evaluation=bad)
    assert "datasets[1].root (voc2007)" in err and "VOCdevkit/VOC2007" in err
    tv_cifar = {"transfer": {"datasets": [{"name": "cifar10_jpeg", "root": str(tree)}]}}
    err = run_study_file(tmp_path, capsys, dataset=dataset, evaluation=tv_cifar)
    assert "evaluation.transfer.datasets[0].root (cifar10_jpeg)" in err and "has 10" in err


def test_imagenet_c_root(tmp_path: Path, capsys: pytest.CaptureFixture, tree: Path) -> None:
    dataset = {"name": "imagefolder", "root": str(tree)}
    inc = tmp_path / "inc"
    corruptions = {"imagenet_c_root": str(inc), "corruptions": ["fog"], "severities": [1, 2]}
    err = run_study_file(tmp_path, capsys, dataset=dataset, evaluation={"corruptions": corruptions})
    assert "evaluation.corruptions.imagenet_c_root" in err and "does not exist" in err
    image_tree(inc / "fog", {"1": ["a", "b"]})
    err = run_study_file(tmp_path, capsys, dataset=dataset, evaluation={"corruptions": corruptions})
    assert "fog/2 does not exist" in err
    image_tree(inc / "fog", {"2": ["a", "x"]})  # labels are folder positions: must match
    err = run_study_file(tmp_path, capsys, dataset=dataset, evaluation={"corruptions": corruptions})
    assert "fog/2 has 2 class folders" in err and "'x'" in err and "training classes" in err
    (inc / "fog" / "2" / "x").rename(inc / "fog" / "2" / "b")
    # the 2-image tree holds one batch of 2 (the pre-flight checks batch sizes too)
    study = {
        "name": "t",
        "losses": [{"name": "ce"}],
        "dataset": dataset,
        "grid": {"batch_size": [2]},
    }
    check_study_data(parse_study({**study, "evaluation": {"corruptions": corruptions}}))


def test_digits_with_image_evaluations(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evaluation = {"corruptions": {"corruptions": ["fog"], "severities": [1]}}
    err = run_study_file(tmp_path, capsys, dataset={"name": "digits"}, evaluation=evaluation)
    assert "evaluation.corruptions: a digits encoder reads 1-channel" in err


def test_cluster_mode_leaves_the_checks_to_the_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ncstudy.study

    def no_cluster(*args: object, **kwargs: object) -> list:
        raise ncstudy.study.StudyError("no cluster in this test")

    monkeypatch.setattr(ncstudy.study, "run_study", no_cluster)
    path = tmp_path / "study.yaml"
    dataset = {"name": "cifar10", "root": str(tmp_path / "on-the-workers")}
    path.write_text(yaml.safe_dump({"name": "pf", "losses": [{"name": "ce"}], "dataset": dataset}))
    code = main([str(path), "--output", str(tmp_path / "runs"), "--address", "ray://head:10001"])
    out = capsys.readouterr()
    assert code == 2 and "no cluster in this test" in out.err
    assert "data paths are checked on the workers" in out.out and "dataset.root" not in out.err
