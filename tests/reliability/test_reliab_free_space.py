"""Free space and kept checkpoints (issue 19, section 3): a study whose checkpoints and stores
would not fit the disk is refused before anything is written, saying how much it needs and how
much is free; `resources.checkpoints_to_keep` is validated and leaves `--resume` of a study
written before it unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ray

from ncstudy import diskspace
from ncstudy import study as st
from ncstudy.config import SpecError, expand, parse_study
from ncstudy.models import build_model
from ncstudy.paths import StudyError, StudyPaths
from ncstudy.resume import study_changes

MB = 2**20


def spec(tmp_path: Path, **over: Any) -> dict:
    study = {
        "name": "disk",
        "output_dir": str(tmp_path / "runs"),
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "resnet18", "width": 64},
        "losses": [{"name": "ce"}],
        "grid": {"batch_size": [64], "seed": [0, 1, 2]},
    }
    study.update(over)
    return study


def real_parameter_count(trial: Any) -> int:
    """An independent count: the encoder built for real on the CPU, and a 10-class head."""
    encoder = build_model(trial.model, (1, 8, 8))
    return sum(p.numel() for p in encoder.parameters()) + 10 * encoder.feature_dim + 10


def test_parameter_count_matches_the_real_model(tmp_path: Path) -> None:
    trial = expand(parse_study(spec(tmp_path)))[0]
    count = diskspace.parameter_count(trial)
    assert count == real_parameter_count(trial)
    assert 11.1e6 < count < 11.3e6  # ResNet-18 (CIFAR stem): 11.17 M parameters


def fake_disk(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    usage = SimpleNamespace(total=10 * free + 1, used=9 * free, free=free)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)


def test_too_little_space_is_refused_naming_need_and_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = parse_study(spec(tmp_path, resources={"checkpoints_to_keep": 3}))
    trial = expand(study)[0]
    # 3 tensors of float32 per parameter, 3 kept + 1 being written, 2 trials at once, x2
    need = real_parameter_count(trial) * 4 * 3 * 4 * 2 * 2 + 100 * MB
    paths = StudyPaths.of(study)
    fake_disk(monkeypatch, need)  # exactly enough
    diskspace.check_free_space(study, paths, trial, concurrency=2)
    fake_disk(monkeypatch, need - 1)
    with pytest.raises(StudyError) as err:
        diskspace.check_free_space(study, paths, trial, concurrency=2)
    message = str(err.value)
    assert f"needs about {need / MB:,.0f} MB" in message
    assert f"{(need - 1) / MB:,.0f} MB is free" in message
    assert "x 4 kept per trial x 2 trial(s) at once" in message
    assert "resources.checkpoints_to_keep" in message


def test_the_driver_refuses_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("MLFLOW_TRACKING_URI", "NCSTUDY_STORAGE_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])
    fake_disk(monkeypatch, 50 * MB)  # under the 100 MB for the stores alone
    with pytest.raises(StudyError, match="50 MB is free"):
        st.run_study(parse_study(spec(tmp_path)))
    assert not (tmp_path / "runs").exists()


def test_storage_on_another_disk_is_checked_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3:// storage: only the output folder's stores count against the local disk."""
    study = parse_study(spec(tmp_path))
    trial = expand(study)[0]
    fake_disk(monkeypatch, 101 * MB)
    diskspace.check_free_space(study, StudyPaths.of(study, "s3://bucket/x"), trial, 8)
    with pytest.raises(StudyError, match="needs about"):
        diskspace.check_free_space(study, StudyPaths.of(study), trial, 8)


@pytest.mark.parametrize("bad", [0, 101, 2.5])
def test_checkpoints_to_keep_is_bounded(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(SpecError, match="resources.checkpoints_to_keep"):
        parse_study(spec(tmp_path, resources={"checkpoints_to_keep": bad}))


def test_a_study_stored_before_the_field_resumes_unchanged(tmp_path: Path) -> None:
    """`--resume` compares the stored study with the current one, defaults filled in on both
    sides: a stored study without `checkpoints_to_keep` is the default study, not an edit."""
    study = parse_study(spec(tmp_path))
    stored = study.model_dump(mode="json")
    del stored["resources"]["checkpoints_to_keep"]
    assert "checkpoints_to_keep" not in str(stored)
    assert study_changes(stored, study) == []
    edited = parse_study(spec(tmp_path, resources={"checkpoints_to_keep": 5}))
    assert study_changes(stored, edited) == ["resources.checkpoints_to_keep: 2 -> 5"]


def test_the_trial_config_hash_does_not_see_it(tmp_path: Path) -> None:
    """Existing runs are continued: the config hash (checked on --resume) leaves resources out."""
    before = expand(parse_study(spec(tmp_path)))[0]
    after = expand(parse_study(spec(tmp_path, resources={"checkpoints_to_keep": 7})))[0]
    assert before.key == after.key and before.config_hash() == after.config_hash()
