"""Study schema: good and bad YAMLs, expansion (counts, keys), and the CLI's refusals (exit 2,
nothing written, before Ray or MLflow start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ncstudy.config import SpecError, expand, load_study, parse_study, trial_key
from ncstudy.run import main

REPO = Path(__file__).resolve().parents[2]


def base(**over: object) -> dict:
    study = {
        "name": "t",
        "losses": [{"name": "ce"}, {"name": "normface"}],
        "grid": {"temperature": [0.1, 0.5], "batch_size": [32, 64], "seed": [0, 1]},
    }
    study.update(over)
    return study


def write(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_validates(path: Path) -> None:
    study = load_study(path)
    assert expand(study), "a shipped study must have trials"


def test_quickstart_expands_to_ce_and_three_normface_temperatures() -> None:
    trials = expand(load_study(REPO / "studies/quickstart.yaml"))
    assert [t.key for t in trials] == [
        "ce-b64-s0",
        "normface-t0.05-b64-s0",
        "normface-t0.2-b64-s0",
        "normface-t1-b64-s0",
    ]


def test_expansion_counts_keys_and_resolution() -> None:
    trials = expand(parse_study(base()))
    # ce has no temperature: 2 batch sizes x 2 seeds; normface: 2 temps x 2 x 2
    assert len(trials) == 4 + 8
    keys = [t.key for t in trials]
    assert len(set(keys)) == len(keys)
    assert "ce-b32-s1" in keys and "normface-t0.5-b64-s0" in keys
    nf = next(t for t in trials if t.key == "normface-t0.5-b64-s0")
    assert nf.loss_params["temperature"] == 0.5 and nf.temperature == 0.5
    # linear lr scaling: base lr 0.1 at 256
    assert nf.lr == pytest.approx(0.1 * 64 / 256)
    assert expand(parse_study(base())) == trials  # deterministic


def test_extra_axes_and_per_loss_temperatures() -> None:
    study = base(
        losses=[{"name": "ce"}, {"name": "ntce", "temperatures": [0.2]}],
        grid={
            "temperature": [0.1],
            "batch_size": [64],
            "seed": [3],
            "axes": {"train.weight_decay": [0.0, 0.001], "loss.queue_size": [0, 128]},
        },
    )
    trials = expand(parse_study(study))
    keys = sorted(t.key for t in trials)
    # queue_size applies to ntce only; weight decay to both
    assert keys == sorted(
        [
            "ce-b64-wd0-s3",
            "ce-b64-wd0.001-s3",
            "ntce-t0.2-b64-wd0-qs0-s3",
            "ntce-t0.2-b64-wd0-qs128-s3",
            "ntce-t0.2-b64-wd0.001-qs0-s3",
            "ntce-t0.2-b64-wd0.001-qs128-s3",
        ]
    )
    t = next(t for t in trials if t.key == "ntce-t0.2-b64-wd0.001-qs128-s3")
    assert t.train.weight_decay == 0.001 and t.loss_params["queue_size"] == 128


def test_config_hash_is_stable_and_sensitive() -> None:
    a, b = expand(parse_study(base()))[:2]
    assert a.config_hash() == expand(parse_study(base()))[0].config_hash()
    assert a.config_hash() != b.config_hash()


def test_trial_key_format() -> None:
    assert trial_key("normface", 0.1, 512, 0, {}) == "normface-t0.1-b512-s0"
    assert trial_key("ce", None, 128, 4, {"dataset.name": "cifar100"}) == "ce-b128-cifar100-s4"


BAD = [
    ({"lossez": []}, "lossez: unknown field (did you mean 'losses'?); allowed here: dataset,"),
    ({"train": {"epoch": 3}}, "train.epoch: unknown field (did you mean 'epochs'?)"),
    ({"losses": [{"name": "ce", "temperature": 1}]}, "losses.0.temperature: unknown field"),
    ({"train": {"epochs": "ten"}}, "train.epochs"),
    ({"losses": [{"name": "crossentropy"}]}, "unknown loss 'crossentropy'"),
    ({"losses": [{"name": "ce", "params": {"gama": 2}}]}, "gama"),
    ({"dataset": {"name": "mnist-ish"}}, "unknown dataset 'mnist-ish'"),
    ({"model": {"name": "vgg99"}}, "unknown model 'vgg99'"),
    ({"grid": {"temperature": [-0.1]}}, "temperatures must be finite and > 0"),
    ({"grid": {"temperature": [float("inf")]}}, "grid.temperature.0: must be a finite number"),
    ({"grid": {"temperature": [float("nan")]}}, "grid.temperature.0: must be a finite number"),
    ({"grid": {"temperature": [0.1], "batch_size": []}}, "grid.batch_size"),
    ({"losses": []}, "no loss"),
    ({"name": "../escape"}, "not a safe study name"),
    ({"name": "/etc"}, "not a safe study name"),
    ({"grid": {"axes": {"train.lrr": [0.1]}}}, "grid.axes.train.lrr"),
    ({"train": {"epochs": 2, "warmup_epochs": 2}}, "warmup_epochs"),
    (
        {"losses": [{"name": "etf_dr"}], "model": {"feature_dim": 4}},
        "losses[0] (etf_dr)",
    ),
    ({"resources": {"workers_per_trial": 3}}, "cannot be split over"),
    (
        {"model": {"sync_bn": True}, "resources": {"workers_per_trial": 2}},
        "SyncBatchNorm runs on GPU workers",
    ),
]


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_studies_are_rejected_with_the_field(change: dict, message: str) -> None:
    with pytest.raises(SpecError, match=None) as err:
        parse_study(base(**change))
    assert message in str(err.value)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nlosses: [{name: ce}]\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_study(path)


@pytest.mark.parametrize(
    "change", [{"lossez": []}, {"name": "../../x"}, {"grid": {"temperature": [0]}}]
)
def test_cli_rejects_bad_input_with_exit_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, change: dict
) -> None:
    out = tmp_path / "runs"
    path = write(tmp_path, base(output_dir=str(out), **change))
    assert main([str(path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if os.geteuid() == 0:
        # root can write anywhere: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("")
        out = blocker / "runs"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "runs"
    assert main([str(write(tmp_path, base(output_dir=str(out))))]) == 2
    assert "output_dir" in capsys.readouterr().err
    assert not out.exists()


def test_cli_refuses_existing_study_without_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "runs"
    (out / "t").mkdir(parents=True)
    (out / "t" / "study.yaml").write_text("name: t\n")
    path = write(tmp_path, base(output_dir=str(out)))
    assert main([str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["t"]  # no MLflow store was created


def test_dry_run_prints_the_trial_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "runs"
    assert main([str(write(tmp_path, base(output_dir=str(out)))), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "normface-t0.1-b32-s0" in text and "12 trials" in text
    assert not out.exists()


def test_dry_run_shows_a_loss_s_own_train_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    losses = [{"name": "ce"}, {"name": "normface", "train": {"lr": 0.05, "epochs": 3}}]
    path = write(tmp_path, base(losses=losses, output_dir=str(tmp_path / "runs")))
    assert main([str(path), "--dry-run"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line}
    assert "train.epochs=3" in rows["normface-t0.1-b32-s0"]
    # its own lr, scaled like the study's: 0.05 at base batch 256 -> 0.05 * 32/256 (linear)
    assert float(rows["normface-t0.1-b32-s0"].split()[5]) == pytest.approx(0.05 * 32 / 256)
    assert "train." not in rows["ce-b32-s0"]
