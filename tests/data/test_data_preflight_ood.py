"""Pre-flight checks of evaluation.ood (before Ray starts): missing STL-10 files offline, class
mappings that cannot work and a non-RGB training set stop the run with the field named; present
files and `download: true` pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from stl10_preflight_files import write_stl10_small

from ncstudy.config import SpecError, parse_study
from ncstudy.data.preflight import check_study_data
from ncstudy.run import main


def study(ood: dict, dataset: dict | None = None) -> dict:
    dataset = dataset or {"name": "cifar10", "download": True}
    return {"name": "pf", "losses": [{"name": "ce"}], "model": {"name": "small_cnn"},
            "dataset": dataset, "evaluation": {"ood": [ood]}}  # fmt: skip


def test_ood_preflight(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = str(tmp_path / "stl")
    with pytest.raises(SpecError, match=r"evaluation.ood\[0\].root: STL-10 is not under"):
        check_study_data(parse_study(study({"name": "stl10", "root": root})))
    check_study_data(parse_study(study({"name": "stl10", "root": root, "download": True})))
    write_stl10_small(tmp_path / "stl")
    check_study_data(parse_study(study({"name": "stl10", "root": root})))
    subset = {"name": "cifar10", "download": True, "classes": ["frog", "cat"]}
    check_study_data(parse_study(study({"name": "stl10", "root": root}, subset)))  # cat maps
    bad = {"name": "stl10", "root": root, "classes": {"cat": "tiger"}}
    with pytest.raises(SpecError, match=r"evaluation.ood\[0\].classes: cat -> 'tiger'"):
        check_study_data(parse_study(study(bad)))
    none = {"name": "cifar10", "download": True, "classes": ["frog", "automobile"]}
    drop_car = {"name": "stl10", "root": root, "classes": {"car": None}}
    with pytest.raises(SpecError, match=r"evaluation.ood\[0\]: none of its classes"):
        check_study_data(parse_study(study(drop_car, none)))
    digits = {"name": "digits", "image_size": 8}
    with pytest.raises(SpecError, match="digits is not an RGB image dataset"):
        check_study_data(parse_study(study({"name": "stl10", "root": root}, digits)))
    path = tmp_path / "study.yaml"  # the command line stops before Ray with exit code 2
    path.write_text(yaml.safe_dump(study({"name": "stl10", "root": str(tmp_path / "none")})))
    assert main([str(path), "--output", str(tmp_path / "runs")]) == 2
    assert "evaluation.ood[0].root" in capsys.readouterr().err
