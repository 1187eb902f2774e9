"""Fast checks of the cluster inputs (no servers): `resources.custom` in the study schema and
in a trial's resource demand, and the service checks' errors for addresses that cannot work."""

from __future__ import annotations

import math
import socket

import pytest

from ncstudy import cluster, services
from ncstudy.config import SpecError, parse_study
from ncstudy.resume import StudyError


def _study(**resources: object) -> dict:
    return {
        "name": "custom",
        "dataset": {"name": "digits", "image_size": 8},
        "model": {"name": "small_cnn", "width": 4, "feature_dim": 16},
        "losses": [{"name": "ce"}],
        "resources": resources,
    }


def test_custom_resources_are_validated_and_named() -> None:
    spec = parse_study(_study(custom={"accel": 1, "half": 0.5}))
    assert spec.resources.custom == {"accel": 1.0, "half": 0.5}
    assert parse_study(_study()).resources.custom == {}
    bad = [
        ({"accel": 0}, "resources.custom.accel: the amount must be positive"),
        ({"accel": -1}, "must be positive"),
        ({"accel": math.inf}, "positive and finite"),
        ({"accel": 1.5}, "fractional amounts only up to 1"),
        ({"accel": "one"}, "number"),
        ({"accel": True}, "number"),
        ({"GPU": 1}, "resources.custom.GPU: GPU is managed by Ray"),
        ({"memory": 1}, "managed by Ray"),
        ({" accel": 1}, "plain name"),
    ]
    for custom, message in bad:
        with pytest.raises(SpecError, match=message.replace(".", r"\.")):
            parse_study(_study(custom=custom))


def test_custom_resources_count_per_worker_in_the_demand() -> None:
    demand = cluster.trial_demand({"workers_per_trial": 2, "custom": {"accel": 0.5}})
    assert demand == {"CPU": 3.0, "GPU": 0.0, "accel": 1.0}
    # a local machine without the resource: the study is refused, naming the field
    with pytest.raises(ValueError, match="custom"):
        cluster.max_concurrent_trials({"CPU": 8}, {"custom": {"accel": 1}}, None)
    # two trials' worth of the resource: two at once
    assert (
        cluster.max_concurrent_trials({"CPU": 8, "accel": 2}, {"custom": {"accel": 1}}, None) == 2
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_service_checks_name_the_setting() -> None:
    port = _closed_port()
    with pytest.raises(StudyError, match=f"--address 127.0.0.1:{port}: no Ray cluster answers"):
        services.check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(StudyError, match="expected HOST:PORT"):
        services.check_ray_address("headnode")
    services.check_ray_address("auto")  # ray.init finds it itself
    with pytest.raises(StudyError, match="the MLflow server does not answer"):
        services.check_tracking_uri(f"http://127.0.0.1:{port}")
    services.check_tracking_uri("sqlite:////tmp/x/mlflow.db")  # local: created on demand
    with pytest.raises(StudyError, match=r"NCSTUDY_OPTUNA_STORAGE=postgresql://u:\*\*\*@127"):
        services.check_database(
            f"postgresql://u:secret@127.0.0.1:{port}/db", "NCSTUDY_OPTUNA_STORAGE"
        )
