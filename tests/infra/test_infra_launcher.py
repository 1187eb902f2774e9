"""The Ray cluster-launcher YAMLs (infra/ray/): Ray's own offline preparation and JSON schema,
botocore's EC2 model and field allow-lists for the node configs, and the project's rules (the head
runs no trials, GPU groups scale from zero, versions match pyproject.toml, storage and MLflow by
environment, the dashboard on loopback)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from infra_common import (
    INFRA,
    LAUNCHER_FILES,
    _load_launcher,
    _pins,
    _prepared,
    _project,
    _python_minor,
    _worker_types,
)

from ncstudy import cluster

# ---------------------------------------------------------- Ray cluster-launcher YAMLs


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_passes_ray_validation(path: Path) -> None:
    """prepare_config (defaults merged, offline) then validate_config (Ray's JSON schema)."""
    config = _load_launcher(path)
    prepared = _prepared(config)
    assert prepared["provider"]["type"] == path.stem
    # Our commands replace Ray's defaults (which would pip-install a nightly Ray wheel).
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert prepared[key] == config[key]


MISSPELLINGS = [
    ("top level", lambda c: c.__setitem__("idle_timeout_minute", c.pop("idle_timeout_minutes"))),
    ("node type", lambda c: _rename(_worker_types(c), "min_workers", "min_worker")),
    ("docker", lambda c: c["docker"].__setitem__("pull_before_runs", True)),
    ("head", lambda c: c["available_node_types"]["head"].__setitem__("resource", {"CPU": 0})),
]


def _rename(node_types: dict[str, dict[str, Any]], old: str, new: str) -> None:
    """Rename a field in the first worker node type."""
    node_type = next(iter(node_types.values()))
    node_type[new] = node_type.pop(old)


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("where,misspell", MISSPELLINGS, ids=[m[0] for m in MISSPELLINGS])
def test_launcher_misspelt_field_fails(path: Path, where: str, misspell: Any) -> None:
    """Ray's schema rejects unknown keys outside the provider-specific node_config."""
    config = _load_launcher(path)
    misspell(config)
    with pytest.raises(jsonschema.ValidationError, match="unexpected"):
        _prepared(config)


def _check_botocore_shape(value: Any, shape: Any, path: str) -> list[str]:
    """Errors of ``value`` against a botocore shape: unknown members, wrong types, bad enums."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        errors = []
        for key, item in value.items():
            if key not in shape.members:
                errors.append(f"{path}.{key}: not a member of {shape.name}")
            else:
                errors += _check_botocore_shape(item, shape.members[key], f"{path}.{key}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [
            e
            for i, v in enumerate(value)
            for e in _check_botocore_shape(v, shape.member, f"{path}[{i}]")
        ]
    if kind == "map":
        return [
            e
            for k, v in value.items()
            for e in _check_botocore_shape(v, shape.value, f"{path}.{k}")
        ]
    expected = {"string": str, "boolean": bool, "integer": int, "long": int}.get(kind, object)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return [f"{path}: expected {kind}, got {value!r}"]
    if kind == "string" and shape.enum and value not in shape.enum:
        return [f"{path}: {value!r} not in {shape.enum}"]
    return []


def _run_instances_shape() -> Any:
    """botocore's offline model of EC2 RunInstances' request (what node_config feeds)."""
    botocore_session = pytest.importorskip("botocore.session")
    model = botocore_session.get_session().get_service_model("ec2")
    return model.operation_model("RunInstances").input_shape


def _broken_aws_node_config() -> dict[str, Any]:
    """The spot group's node_config with three misspellings (top level, nested, enum value)."""
    config = _load_launcher(INFRA / "ray" / "aws.yaml")
    broken = copy.deepcopy(config["available_node_types"]["gpu_spot"]["node_config"])
    broken["InstanceTyp"] = broken.pop("InstanceType")
    broken["BlockDeviceMappings"][0]["Ebs"]["VolumeSze"] = broken["BlockDeviceMappings"][0][
        "Ebs"
    ].pop("VolumeSize")
    broken["InstanceMarketOptions"]["MarketType"] = "spots"
    return broken


def test_aws_node_configs_match_botocore_model() -> None:
    """With botocore installed: every field, type and enum value against EC2's API model."""
    shape = _run_instances_shape()
    config = _load_launcher(INFRA / "ray" / "aws.yaml")
    for name, node_type in config["available_node_types"].items():
        assert _check_botocore_shape(node_type["node_config"], shape, name) == []
    errors = _check_botocore_shape(_broken_aws_node_config(), shape, "gpu_spot")
    assert len(errors) == 3, errors


def _allow_list_errors(value: Any, allowed: dict[str, Any] | None, path: str) -> list[str]:
    """Fields of ``value`` outside a nested allow-list (None: anything below is accepted)."""
    if allowed is None:
        return []
    if isinstance(value, list):
        return [
            e for i, v in enumerate(value) for e in _allow_list_errors(v, allowed, f"{path}[{i}]")
        ]
    if not isinstance(value, dict):
        return []
    errors = []
    for key, item in value.items():
        if key not in allowed:
            errors.append(f"{path}.{key}")
        else:
            errors += _allow_list_errors(item, allowed[key], f"{path}.{key}")
    return errors


def _any(names: str) -> dict[str, None]:
    """Allow-list entries whose values are not checked further."""
    return dict.fromkeys(names.split())


# Our own allow-lists of the provider API fields a Ray node_config may carry, from the API
# references (EC2 RunInstances; Compute Engine v1 instances.insert). They always run; the
# botocore test above checks AWS against the real model when botocore is installed.
_EBS = _any(
    "DeleteOnTermination Encrypted Iops KmsKeyId SnapshotId Throughput VolumeSize VolumeType"
)
_SPOT = _any(
    "BlockDurationMinutes InstanceInterruptionBehavior MaxPrice SpotInstanceType ValidUntil"
)
AWS_FIELDS = {
    **_any(
        "CapacityReservationSpecification CpuOptions EbsOptimized ImageId "
        "InstanceInitiatedShutdownBehavior InstanceType KeyName LaunchTemplate MetadataOptions "
        "NetworkInterfaces Placement SecurityGroupIds SubnetId TagSpecifications UserData"
    ),
    "BlockDeviceMappings": {"DeviceName": None, "Ebs": _EBS, "NoDevice": None, "VirtualName": None},
    "IamInstanceProfile": _any("Arn Name"),
    "InstanceMarketOptions": {"MarketType": None, "SpotOptions": _SPOT},
    # Ray's own extension: a list of subnets to choose from.
    "SubnetIds": None,
}
GCP_FIELDS = {
    **_any(
        "advancedMachineFeatures canIpForward confidentialInstanceConfig deletionProtection "
        "description displayDevice hostname labels machineType minCpuPlatform networkInterfaces "
        "networkPerformanceConfig reservationAffinity resourcePolicies shieldedInstanceConfig tags"
    ),
    "disks": {
        **_any("autoDelete boot deviceName interface mode type"),
        "initializeParams": _any("diskName diskSizeGb diskType labels sourceImage"),
    },
    "guestAccelerators": _any("acceleratorCount acceleratorType"),
    "metadata": {"items": _any("key value")},
    "scheduling": _any(
        "automaticRestart instanceTerminationAction locationHint maxRunDuration minNodeCpus "
        "nodeAffinities onHostMaintenance preemptible provisioningModel"
    ),
    "serviceAccounts": _any("email scopes"),
}


def test_aws_node_configs_use_known_run_instances_fields() -> None:
    """Every AWS node_config field is a RunInstances field; misspellings fail."""
    config = _load_launcher(INFRA / "ray" / "aws.yaml")
    for name, node_type in config["available_node_types"].items():
        assert _allow_list_errors(node_type["node_config"], AWS_FIELDS, name) == []
    errors = _allow_list_errors(_broken_aws_node_config(), AWS_FIELDS, "gpu_spot")
    assert errors == ["gpu_spot.BlockDeviceMappings[0].Ebs.VolumeSze", "gpu_spot.InstanceTyp"]


def test_gcp_node_configs_use_known_instance_fields() -> None:
    """GCP node_config fields are Compute Engine Instance fields; misspellings fail."""
    config = _load_launcher(INFRA / "ray" / "gcp.yaml")
    for name, node_type in config["available_node_types"].items():
        assert _allow_list_errors(node_type["node_config"], GCP_FIELDS, name) == []
    broken = copy.deepcopy(config["available_node_types"]["gpu_spot"]["node_config"])
    broken["machineTyp"] = broken.pop("machineType")
    broken["scheduling"]["provisioningMode"] = broken["scheduling"].pop("provisioningModel")
    errors = _allow_list_errors(broken, GCP_FIELDS, "spot")
    assert sorted(errors) == ["spot.machineTyp", "spot.scheduling.provisioningMode"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_head_runs_no_trials_and_gpus_scale_from_zero(path: Path) -> None:
    """Head: zero logical CPUs and no GPU. Workers: GPU groups from zero, on-demand and spot."""
    config = _prepared(_load_launcher(path))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    assert head["max_workers"] == 0
    workers = _worker_types(config)
    assert workers, "no worker node types"
    spot = []
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, f"{name} must scale from zero"
        assert node_type["max_workers"] > 0
        assert node_type["resources"].get("GPU", 0) >= 1, f"{name} has no GPU"
        node_config = node_type["node_config"]
        market = node_config.get("InstanceMarketOptions", {}).get("MarketType")
        scheduling = node_config.get("scheduling", {})
        spot.append(market == "spot" or scheduling.get("provisioningModel") == "SPOT")
    assert any(spot) and not all(spot), "need both a spot and an on-demand GPU group"
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values()) // 2


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_pins_project_versions(path: Path) -> None:
    """Every node checks Python and Ray against pyproject.toml; the image tag is the version."""
    config = _load_launcher(path)
    check = config["setup_commands"][0]
    assert f"sys.version_info[:2] == {_python_minor()}" in check
    assert f"ray.__version__ == '{_pins()['ray']}'" in check
    assert config["docker"]["image"].rsplit(":", 1)[1] == _project()["version"]
    assert config["docker"]["pull_before_run"] is True


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_passes_storage_and_mlflow_by_environment(path: Path) -> None:
    """NCSTUDY_STORAGE_PATH (shared) and MLFLOW_TRACKING_URI reach `ray start` on every node."""
    config = _load_launcher(path)
    setup = "\n".join(config["setup_commands"])
    storage = re.search(r"export NCSTUDY_STORAGE_PATH=(\S+?)'", setup).group(1)
    assert storage.startswith({"aws": "s3://", "gcp": "gs://"}[path.stem])
    cluster.check_storage_path(storage, node_count=1, shared_fs=False, existing_cluster=True)
    assert "MLFLOW_TRACKING_URI=http://" in "\n".join(config["head_setup_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in "\n".join(
        config["worker_setup_commands"]
    )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert start.index(". ~/ncstudy.env") < start.index("ray start"), key
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--head" in head_start and "--autoscaling-config" in head_start
    server = next(c for c in config["head_start_ray_commands"] if "mlflow server" in c)
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in server and "--workers 1" in server
    # Workers log to it, so it listens beyond loopback; the firewall keeps it inside the VPC.
    assert "--host 0.0.0.0 --port 5000" in server


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_dashboard_listens_on_loopback(path: Path) -> None:
    """The dashboard runs jobs (arbitrary code): on the head's loopback only, reached through
    the SSH tunnel of `ray dashboard`, never on the network even inside the VPC."""
    config = _load_launcher(path)
    head_start = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head_start
    assert not re.search(r"dashboard-host[= ]\S*0\.0\.0\.0", path.read_text())
