"""Bad values that used to get past validation (issue 19, section 4), each written into a real
study file and run through `python -m ncstudy.run`: exit code 2, a message naming the field,
and nothing written (no output folder: Ray and MLflow never started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ncstudy.run import main

TINY = {
    "name": "bad",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
    "losses": [{"name": "ce"}],
    "train": {"epochs": 1},
    "grid": {"batch_size": [64]},
}


def refused(tmp_path: Path, capsys: pytest.CaptureFixture, text: str) -> str:
    """Run the study text; assert exit 2 and that nothing was written; return stderr."""
    path = tmp_path / "study.yaml"
    path.write_text(text)
    out = tmp_path / "runs"
    assert main([str(path), "--output", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def study_text(**sections: object) -> str:
    merged = {**TINY, **sections}
    return yaml.safe_dump(merged, sort_keys=False)


@pytest.mark.parametrize(
    ("train", "field"),
    [
        ({"epochs": 1, "lr": ".inf"}, "train.lr: must be a finite number"),
        ({"epochs": 1, "weight_decay": ".inf"}, "train.weight_decay: must be a finite number"),
        ({"epochs": 1, "momentum": "-.inf"}, "train.momentum: must be a finite number"),
        ({"epochs": 1, "lr": ".nan"}, "train.lr: must be a finite number"),
    ],
)
def test_infinite_floats_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, train: dict, field: str
) -> None:
    # YAML's own spelling of infinity (`.inf`), as a user would write it
    text = study_text(train={k: v for k, v in train.items() if not isinstance(v, str)})
    extra = "".join(f"  {k}: {v}\n" for k, v in train.items() if isinstance(v, str))
    text = text.replace("train:\n", "train:\n" + extra)
    assert field in refused(tmp_path, capsys, text)


def test_infinity_is_refused_in_every_place_a_float_reaches(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Config-wide, not field by field: a loss's own train override, a grid axis, a loss
    parameter and a nested evaluation section."""
    cases = {
        "losses:\n- name: ce\n  train:\n    lr: .inf\n": "losses.0.train: lr: must be a finite",
        "grid:\n  batch_size: [64]\n  axes:\n    train.lr: [0.1, .inf]\n": "train.lr=inf",
        "losses:\n- name: focal\n  params:\n    gamma: .inf\n": "gamma: Input should be a finite",
        "evaluation:\n  probes:\n    lr: .inf\n": "evaluation.probes.lr: must be a finite",
    }
    for i, (section, message) in enumerate(cases.items()):
        key = section.split(":")[0]
        base = {k: v for k, v in TINY.items() if k != key}
        sub = tmp_path / str(i)
        sub.mkdir()
        err = refused(sub, capsys, yaml.safe_dump(base, sort_keys=False) + section)
        assert message in err, err


# 20 seeds x 30 x 30 axis values = 18,000 grid points, each axis well under its own bound
BIG_AXES = {
    "train.lr": [0.1 * (i + 1) for i in range(30)],
    "train.momentum": [0.01 * i for i in range(30)],
}


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"epochs": 1.0e12}}, "train.epochs: Input should be less than or equal to"),
        ({"grid": {"batch_size": [10**9]}}, "grid.batch_size.0: Input should be less than"),
        ({"grid": {"batch_size": [64], "seed": list(range(1001))}}, "grid.seed: 1,001 values"),
        ({"grid": {"batch_size": [64], "seed": [-1]}}, "grid.seed.0: Input should be greater"),
        ({"resources": {"workers_per_trial": 100_000}}, "resources.workers_per_trial"),
        ({"dataset": {"name": "digits", "num_workers": 10_000}}, "dataset.num_workers"),
        ({"resources": {"trial_max_failures": 10**6}}, "resources.trial_max_failures"),
        ({"grid": {"batch_size": [64], "seed": list(range(20)), "axes": BIG_AXES}}, "18,000"),
    ],
)
def test_upper_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture, sections: dict, message: str
) -> None:
    assert message in refused(tmp_path, capsys, study_text(**sections))


def test_batch_larger_than_the_training_split_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """digits: 1797 images, 15 % val and 20 % test held out per class -> 1169 training
    images (the split functions' own arithmetic, recomputed here independently)."""
    import numpy as np
    from sklearn.datasets import load_digits

    counts = np.bincount(load_digits().target)
    train = int(sum(n - round(0.15 * n) - round(0.2 * n) for n in counts))
    err = refused(tmp_path, capsys, study_text(grid={"batch_size": [64, train + 1]}))
    assert f"grid.batch_size (digits): batch size {train + 1} is larger than the training " in err
    assert f"({train} images)" in err and f"at most {train}" in err
    # exactly the split size fits (one batch per epoch): the pre-flight lets it through
    from ncstudy.config import load_study
    from ncstudy.data.preflight import check_study_data

    path = tmp_path / "fits.yaml"
    path.write_text(study_text(grid={"batch_size": [train]}))
    check_study_data(load_study(path))


def test_duplicate_keys_name_the_key_and_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = study_text(train={"epochs": 1, "lr": 0.1}) + "train:\n  lr: 0.5\n"
    lines = text.splitlines()
    first = lines.index("train:") + 1
    err = refused(tmp_path, capsys, text)
    assert f"duplicate key 'train' on lines {first} and {len(lines) - 1}" in err
    # nested: the same key twice inside one section
    nested = study_text().replace("  epochs: 1\n", "  epochs: 1\n  lr: 0.1\n  epochs: 3\n")
    lines = nested.splitlines()
    a, b = [i + 1 for i, line in enumerate(lines) if line == "  epochs: 1" or line == "  epochs: 3"]
    assert f"duplicate key 'epochs' on lines {a} and {b}" in refused(tmp_path, capsys, nested)
    # in a flow mapping on one line
    flow = study_text().replace("train:\n  epochs: 1\n", "train: {epochs: 1, lr: 0.1, lr: 0.2}\n")
    line = flow.splitlines().index("train: {epochs: 1, lr: 0.1, lr: 0.2}") + 1
    assert f"duplicate key 'lr' on lines {line} and {line}" in refused(tmp_path, capsys, flow)


def test_study_name_with_a_trailing_newline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    text = study_text().replace("name: bad\n", 'name: "bad\\n"\n')
    assert "name: 'bad\\n' is not a safe study name" in refused(tmp_path, capsys, text)


def test_split_sizes_match_the_loaders() -> None:
    """The pre-flight's split sizes (computed from class counts, without the data) equal the
    loaded datasets' training splits, under subset, val and test fractions."""
    import numpy as np
    from sklearn.datasets import load_digits

    from ncstudy.config import DatasetSpec
    from ncstudy.data import build_data
    from ncstudy.data.split_sizes import DIGITS_PER_CLASS, train_split_size

    assert tuple(np.bincount(load_digits().target)) == DIGITS_PER_CLASS
    for fields in ({}, {"val_fraction": 0.3, "test_fraction": 0.1}, {"val_fraction": 0.0}):
        spec = DatasetSpec(name="digits", **fields)
        assert train_split_size(spec) == len(build_data(spec, 0).train)


def test_split_sizes_match_an_imagefolder_tree(tmp_path: Path) -> None:
    """Counted from file names (uneven classes, a val hold-out, a subset) = the loaded split."""
    import numpy as np
    from PIL import Image

    from ncstudy.config import DatasetSpec
    from ncstudy.data import build_data
    from ncstudy.data.split_sizes import train_split_size

    for split, counts in (("train", (9, 7, 12)), ("test", (2, 2, 2))):
        for c, n in enumerate(counts):
            folder = tmp_path / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i}.png")
    for fields in (
        {},
        {"val_fraction": 0.3},
        {"subset_per_class": 6},
    ):
        spec = DatasetSpec(name="imagefolder", root=str(tmp_path), image_size=8, **fields)
        assert train_split_size(spec) == len(build_data(spec, 0).train), fields
