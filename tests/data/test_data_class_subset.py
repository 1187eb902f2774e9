"""dataset.classes: a class subset relabelled 0..k-1 in the given order, on every split, checked
against the full dataset; names (CIFAR-10's) and the errors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from ncstudy.config.sections import DatasetSpec
from ncstudy.data.builders import build_data
from ncstudy.data.class_subset import class_indices, split_labels
from ncstudy.data.registry import dataset_num_classes


def test_digits_subset_matches_the_full_splits() -> None:
    full = build_data(DatasetSpec(name="digits"), 0)
    spec = DatasetSpec(name="digits", classes=[7, 2, 5])
    sub = build_data(spec, 0)
    assert sub.num_classes == 3 == dataset_num_classes(spec)
    for split in ("train", "train_eval", "val", "test"):
        labels = split_labels(getattr(full, split))
        got = getattr(sub, split)
        for new, old in enumerate([7, 2, 5]):
            assert int((split_labels(got) == new).sum()) == int((labels == old).sum())
        original = np.flatnonzero(np.isin(labels, [7, 2, 5]))
        x, y = got[3]
        x_full, y_full = getattr(full, split)[int(original[3])]
        assert y == [7, 2, 5].index(int(y_full))
        if split != "train":  # un-augmented: the very same image
            assert (x == x_full).all()
    assert sub.class_counts == tuple(full.class_counts[c] for c in (7, 2, 5))


def test_cifar10_names_resolve_to_the_papers_four_classes() -> None:
    spec = DatasetSpec(name="cifar10", classes=["automobile", "cat", "dog", "truck"])
    assert class_indices(spec) == [1, 3, 5, 9]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"name": "cifar10", "classes": ["cow", "cat"]}, "unknown class 'cow'"),
        ({"name": "cifar100", "classes": ["apple", 3]}, "class indices"),
        ({"name": "digits", "classes": [1, 1]}, "repeated"),
        ({"name": "digits", "classes": [4]}, "at least two"),
        ({"name": "digits", "classes": [1, 10]}, "0..9"),
    ],
)
def test_bad_classes_name_the_field(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        DatasetSpec(**fields)
