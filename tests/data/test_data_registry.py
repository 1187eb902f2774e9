"""The dataset registry owns each dataset's facts: every registered name has a builder and
facts, the class counts are known without loading data, and the downstream evaluations take
their input statistics and the mCE rule from the facts, not from the dataset's name."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ncstudy.config import expand, parse_study
from ncstudy.data import list_datasets
from ncstudy.data import transforms as tf
from ncstudy.data.builders import BUILDERS
from ncstudy.data.registry import DATASETS, dataset_facts, dataset_num_classes
from ncstudy.evaluate import downstream


def test_every_name_has_a_builder_and_facts() -> None:
    assert set(BUILDERS) == set(DATASETS) == set(list_datasets())
    with pytest.raises(ValueError, match=r"dataset.name: unknown dataset 'cifar11'; valid: \["):
        dataset_facts("cifar11")


def test_facts_match_what_the_datasets_are() -> None:
    """Class counts of the fixed datasets; CIFAR-100 has its own statistics (not CIFAR-10's,
    though its name starts with "cifar10"); only ImageNet-1K is compared with AlexNet."""
    counts = {"digits": 10, "cifar10": 10, "cifar100_lt": 100, "imagenet": 1000}
    for name, k in counts.items():
        assert dataset_num_classes(type("Spec", (), {"name": name})()) == k
    assert dataset_facts("cifar100").stats == tf.CIFAR100_STATS != tf.CIFAR10_STATS
    assert dataset_facts("cifar10_jpeg_lt").stats == tf.CIFAR10_STATS
    assert dataset_facts("imagenet100").stats == tf.IMAGENET_STATS
    assert dataset_facts("digits").stats is None  # 1-channel, standardised by its own split
    assert [n for n, f in DATASETS.items() if f.imagenet_1k] == ["imagenet"]


def test_the_registry_loads_no_torch() -> None:
    """Validating names and class counts costs no torch (and no torchvision) import."""
    code = "import sys, ncstudy.data.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_transfer_from_digits_names_the_field() -> None:
    study = {
        "name": "d",
        "dataset": {"name": "digits"},
        "losses": [{"name": "ce"}],
        "evaluation": {"transfer": {"datasets": [{"name": "cifar10"}]}},
    }
    trial = expand(parse_study(study))[0]
    with pytest.raises(ValueError, match="evaluation.transfer: digits has no RGB image statistics"):
        downstream._transfer(torch.nn.Identity(), None, trial, None, torch.device("cpu"))
