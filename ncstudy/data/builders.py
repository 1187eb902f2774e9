"""Dataset name -> the function that builds its DataBundle (`fn(spec, seed)`). The names and
their facts are the registry's (ncstudy.data.registry); each builder lives with its loader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ncstudy.data import cifar, digits, imagefolder, miniimagenet
from ncstudy.data.bundle import DataBundle
from ncstudy.data.class_subset import select_classes
from ncstudy.data.random_labels import with_random_labels
from ncstudy.data.registry import dataset_facts

BUILDERS: dict[str, Callable[[Any, int], DataBundle]] = {
    **digits.BUILDERS,
    **cifar.BUILDERS,
    **imagefolder.BUILDERS,
    miniimagenet.NAME: miniimagenet.build_miniimagenet,
}


def build_data(spec: Any, seed: int) -> DataBundle:
    """Build the dataset named by `spec.name` (a DatasetSpec) with splits drawn from `seed`."""
    dataset_facts(spec.name)  # an unknown name: the registry's error, naming the valid ones
    bundle = BUILDERS[spec.name](spec, seed)
    # the dataset variants: a class subset, then random labels among those classes
    return with_random_labels(select_classes(bundle, spec), spec)
