"""Dataset variants (Yaras et al. 2022): n samples per class on every dataset (the digits too),
random labels (a seeded permutation of the training labels, checked against an independent
permutation) and class subsets (relabelled in the order given), on digits and on an ImageFolder
tree of the offline CIFAR-10 copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ncstudy.config import DatasetSpec
from ncstudy.data import build_data
from ncstudy.data.imagefolder import extract_imagefolder_zip, shared_cifar10_zip
from ncstudy.data.label_view import dataset_labels
from ncstudy.data.random_labels import assignment
from ncstudy.data.split_sizes import train_split_size


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training and 4 test images per class of the offline CIFAR-10 copy."""
    if not shared_cifar10_zip().exists():
        pytest.skip(f"offline CIFAR-10 zip not found at {shared_cifar10_zip()}")
    root = tmp_path_factory.mktemp("variants_jpeg")
    return extract_imagefolder_zip(shared_cifar10_zip(), root, {"train": 12, "test": 4})


def test_digits_subset_per_class_takes_n_per_class_before_the_val_hold_out() -> None:
    spec = DatasetSpec(name="digits", subset_per_class=20, val_fraction=0.25)
    b = build_data(spec, 0)
    assert b.class_counts == (15,) * 10 and len(b.val) == 50
    assert np.bincount(dataset_labels(b.val)).tolist() == [5] * 10
    assert train_split_size(spec) == len(b.train) == 150  # the pre-flight counts the same
    full = build_data(DatasetSpec(name="digits"), 0)
    # the test part does not depend on the subset; it is disjoint from the pool
    assert len(b.test) == len(full.test)
    with pytest.raises(ValueError, match="subset_per_class: 500"):
        build_data(DatasetSpec(name="digits", subset_per_class=500), 0)


def test_digits_test_cap_and_long_tail_apply() -> None:
    spec = DatasetSpec(name="digits", test_per_class=3, subset_per_class=100, imbalance_ratio=0.1)
    b = build_data(spec, 0)
    assert np.bincount(dataset_labels(b.test)).tolist() == [3] * 10
    kept = [int(100 * 0.1 ** (c / 9) + 1e-9) for c in range(10)]  # the profile, before val
    assert sum(b.class_counts) + len(b.val) == sum(kept)
    assert b.class_counts[0] > b.class_counts[-1]
    with pytest.raises(ValueError, match="imbalance_ratio: the digits classes"):
        build_data(DatasetSpec(name="digits", imbalance_ratio=0.1), 0)


def test_random_labels_are_the_seeded_permutation_of_the_true_labels() -> None:
    base = DatasetSpec(name="digits", subset_per_class=30, augment=False)
    true = build_data(base, 0)
    rl = build_data(base.model_copy(update={"random_labels": True, "label_seed": 7}), 0)
    y_true = dataset_labels(true.train_eval)
    perm = np.random.default_rng(7).permutation(len(y_true))  # independent of the module
    y_new = np.array([int(rl.train_eval[i][1]) for i in range(len(rl.train_eval))])
    assert np.array_equal(y_new, y_true[perm])
    assert np.array_equal([int(rl.train[i][1]) for i in range(len(rl.train))], y_new)
    assert (y_new != y_true).mean() > 0.7  # about 9/10 change class
    assert rl.class_counts == true.class_counts  # a permutation keeps the class sizes
    assert torch.equal(rl.train_eval[5][0], true.train_eval[5][0])  # same images
    assert np.array_equal(dataset_labels(rl.val), dataset_labels(true.val))  # true labels
    assert np.array_equal(dataset_labels(rl.test), dataset_labels(true.test))
    again = build_data(base.model_copy(update={"random_labels": True, "label_seed": 7}), 0)
    assert np.array_equal(dataset_labels(again.train_eval), y_new)
    other = build_data(base.model_copy(update={"random_labels": True, "label_seed": 8}), 0)
    assert not np.array_equal(dataset_labels(other.train_eval), y_new)
    record = assignment(rl, base.model_copy(update={"random_labels": True, "label_seed": 7}))
    assert record["label_seed"] == 7 and record["permutation"] == perm.tolist()
    assert record["true_labels"] == y_true.tolist() and record["labels"] == y_new.tolist()


def test_class_subset_relabels_in_the_order_given() -> None:
    full = build_data(DatasetSpec(name="digits", augment=False), 0)
    sub = build_data(DatasetSpec(name="digits", classes=[7, "2", 4], augment=False), 0)
    assert sub.num_classes == 3
    for split in ("train_eval", "val", "test"):
        src, view = getattr(full, split), getattr(sub, split)
        y = dataset_labels(src)
        assert len(view) == int(np.isin(y, [7, 2, 4]).sum())
        original = y[view.indices]
        assert np.array_equal(np.array([7, 2, 4])[dataset_labels(view)], original)
    assert sub.class_counts == tuple(full.class_counts[c] for c in (7, 2, 4))
    with pytest.raises(ValueError, match="unknown class 'cat'"):
        build_data(DatasetSpec(name="digits", classes=["cat", 1]), 0)
    with pytest.raises(ValueError, match=r"has classes 0\.\.9"):
        build_data(DatasetSpec(name="digits", classes=[1, 10]), 0)


def test_variants_compose_on_an_image_folder(jpeg_root: Path) -> None:
    spec = DatasetSpec(
        name="cifar10_jpeg",
        root=str(jpeg_root),
        subset_per_class=10,
        val_fraction=0.2,
        classes=["cat", "dog"],
        random_labels=True,
        label_seed=3,
        augment=False,
    )
    b = build_data(spec, 0)
    assert b.num_classes == 2 and b.class_counts == (8, 8) and len(b.test) == 8
    plain = build_data(spec.model_copy(update={"random_labels": False}), 0)
    y = dataset_labels(plain.train_eval)
    assert np.array_equal(dataset_labels(b.train_eval), y[np.random.default_rng(3).permutation(16)])
    assert torch.equal(b.train_eval[0][0], plain.train_eval[0][0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"label_seed": 3}, "label_seed applies with random_labels"),
        ({"classes": [1]}, "at least two"),
        ({"classes": [1, 1]}, "repeated classes"),
        ({"classes": [-1, 2]}, "start at 0"),
        (
            {"name": "cifar10", "random_labels": True, "loader": "ffcv", "beton_dir": "/x"},
            "random_labels: the FFCV",
        ),
    ],
)
def test_bad_variant_fields_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DatasetSpec(**{"name": "digits", **fields})
