"""Offline validation of infra/ (Ray launcher YAMLs, KubeRay manifests, image) and ncstudy.cluster.

No cloud or cluster calls: Ray's own config preparation and JSON schema for the launcher YAMLs,
botocore's EC2 model for AWS node configs, the KubeRay CRD schema kept in infra/k8s/schema/ for
the manifests, plus the project's own rules (versions match pyproject.toml, the head runs no
trials, GPU groups scale from zero, no credentials in files).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ncstudy import cluster, tracking

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMA_DIR = INFRA / "k8s" / "schema"
LAUNCHER_FILES = sorted((INFRA / "ray").glob("*.yaml"))
K8S_FILES = sorted((INFRA / "k8s").glob("*.yaml"))
PLACEHOLDER = re.compile(r"REPLACE-ME(?:-[a-z]+)*")


# ---------------------------------------------------------------------------- helpers


def _project() -> dict[str, Any]:
    """pyproject.toml's [project] table."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins() -> dict[str, str]:
    """Exact pins (``name==version``) of the project's dependencies, by bare package name."""
    pins = {}
    for requirement in _project()["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", requirement.strip())
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


def _python_minor() -> tuple[int, int]:
    """The one Python minor version that ``requires-python`` allows (">=3.11,<3.12")."""
    low = re.search(r">=\s*3\.(\d+)", _project()["requires-python"])
    high = re.search(r"<\s*3\.(\d+)", _project()["requires-python"])
    assert low and high and int(high.group(1)) == int(low.group(1)) + 1, "pin one Python minor"
    return 3, int(low.group(1))


def _image_refs(text: str) -> list[str]:
    """Every reference to the project's image in a file's text."""
    return re.findall(r"[\w.\-/]*ncstudy:[\w.\-]+", text)


def _load_launcher(path: Path) -> dict[str, Any]:
    """A launcher YAML as Ray's ``ray up`` loads it."""
    return yaml.safe_load(path.read_text())


def _prepared(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's own offline preparation and validation (defaults merged; no cloud calls)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The launcher's node types other than the head's."""
    head = config["head_node_type"]
    return {n: t for n, t in config["available_node_types"].items() if n != head}


def _strict(node: Any) -> Any:
    """Structural CRD schema -> JSON schema that rejects unknown fields (API server strict mode)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _k8s_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for one manifest kind: KubeRay excerpt or Kubernetes v1.35 definitions."""
    k8s_defs = json.loads((SCHEMA_DIR / "k8s-v1.35-defs.json").read_text())["$defs"]
    kuberay = yaml.safe_load((SCHEMA_DIR / "kuberay-v1-excerpt.yaml").read_text())
    defs = {**k8s_defs, **kuberay["$defs"]}
    core = {
        "Deployment": "io.k8s.api.apps.v1.Deployment",
        "Service": "io.k8s.api.core.v1.Service",
        "PersistentVolumeClaim": "io.k8s.api.core.v1.PersistentVolumeClaim",
    }
    if kind in ("RayCluster", "RayJob"):
        root = kuberay[kind]
    elif kind in core:
        root = {"$ref": f"#/$defs/{core[kind]}"}
    else:
        raise AssertionError(f"no schema for kind {kind!r}; add it to infra/k8s/schema/")
    schema = _strict({**root, "$defs": defs})
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) for every manifest under infra/k8s/."""
    docs = []
    for path in K8S_FILES:
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _k8s_errors(doc: dict[str, Any]) -> list[str]:
    """Schema violations of one manifest, as readable paths."""
    validator = _k8s_validator(doc["kind"])
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]


def _ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayCluster or RayJob manifest."""
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod template in a manifest."""
    if doc["kind"] in ("RayCluster", "RayJob"):
        spec = _ray_cluster_spec(doc)
        templates = [spec["headGroupSpec"]["template"]]
        templates += [group["template"] for group in spec["workerGroupSpecs"]]
        if doc["kind"] == "RayJob":
            templates.append(doc["spec"]["submitterPodTemplate"])
        return templates
    if doc["kind"] == "Deployment":
        return [doc["spec"]["template"]]
    return []


def _env(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain environment variables."""
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


# ------------------------------------------------------------- every file is checked


def test_every_infra_file_has_a_check() -> None:
    """A new file under infra/ must come with a validation here."""
    checked = {
        *(p.relative_to(INFRA).as_posix() for p in LAUNCHER_FILES + K8S_FILES),
        "README.md",
        "docker/Dockerfile",
        "docker/Dockerfile.dockerignore",
        "k8s/schema/README.md",
        "k8s/schema/kuberay-v1-excerpt.yaml",
        "k8s/schema/k8s-v1.35-defs.json",
        "k8s/schema/extract_k8s_defs.py",
    }
    present = {
        p.relative_to(INFRA).as_posix()
        for p in INFRA.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert present - checked == set(), "files under infra/ without a check in tests/infra/test_infra.py"
    assert {"ray/aws.yaml", "ray/gcp.yaml"} <= present
    assert {"k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/mlflow.yaml"} <= present


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


# ------------------------------------------------------------------ KubeRay manifests


@pytest.mark.parametrize("name,doc", _k8s_docs(), ids=[f"{n}:{d['kind']}" for n, d in _k8s_docs()])
def test_k8s_manifest_matches_schema(name: str, doc: dict[str, Any]) -> None:
    """Every manifest validates against the KubeRay CRD / Kubernetes schema, strictly."""
    assert _k8s_errors(doc) == []


def _doc(kind: str) -> dict[str, Any]:
    """A deep copy of the first manifest of ``kind``."""
    return copy.deepcopy(next(d for _, d in _k8s_docs() if d["kind"] == kind))


K8S_MISSPELLINGS = [
    ("RayCluster", ["spec", "headGroupSpec"], "rayStartParams", "rayStartParam"),
    ("RayCluster", ["spec", "workerGroupSpecs", 0], "minReplicas", "minReplica"),
    ("RayCluster", ["spec", "enableInTreeAutoscaling"], None, None),
    (
        "RayCluster",
        ["spec", "workerGroupSpecs", 1, "template", "spec", "containers", 0],
        "resources",
        "resource",
    ),
    ("RayJob", ["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
    (
        "RayJob",
        ["spec", "rayClusterSpec", "headGroupSpec", "template", "spec"],
        "containers",
        "container",
    ),
    (
        "Deployment",
        ["spec", "template", "spec", "containers", 0],
        "readinessProbe",
        "readynessProbe",
    ),
]


@pytest.mark.parametrize(
    "kind,path,old,new",
    K8S_MISSPELLINGS,
    ids=[f"{m[0]}-{m[3] or 'type'}" for m in K8S_MISSPELLINGS],
)
def test_k8s_misspelt_field_fails(kind: str, path: list, old: str | None, new: str | None) -> None:
    """A misspelt field (or a wrong type) anywhere in a manifest is a schema error."""
    doc = _doc(kind)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if old is None:  # wrong type instead of a misspelling
        parent[path[-1]] = "yes"
    else:
        node = parent[path[-1]]
        node[new] = node.pop(old)
    errors = _k8s_errors(doc)
    assert errors, f"{kind}: {new or 'wrong type'} was accepted"
    if new is not None:
        assert any(f"'{new}' was unexpected" in error for error in errors), errors


@pytest.mark.parametrize("kind", ["RayCluster", "RayJob"])
def test_k8s_head_runs_no_trials_and_gpus_autoscale_from_zero(kind: str) -> None:
    """Head: num-cpus 0, no GPU. Workers: autoscaled GPU groups with minReplicas 0."""
    spec = _ray_cluster_spec(_doc(kind))
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits
    assert spec["enableInTreeAutoscaling"] is True
    groups = spec["workerGroupSpecs"]
    assert {g["groupName"] for g in groups} >= {"gpu-ondemand", "gpu-spot"}
    for group in groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0
        assert group["maxReplicas"] > 0
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, group["groupName"]


def _cluster_node_groups() -> dict[str, list[tuple[float, float, int]]]:
    """(logical CPUs, GPUs, max nodes) of every GPU worker group, per shipped cluster."""
    clusters = {}
    for path in LAUNCHER_FILES:
        types = _worker_types(_prepared(_load_launcher(path))).values()
        clusters[path.name] = [
            (t["resources"]["CPU"], t["resources"]["GPU"], t["max_workers"]) for t in types
        ]
    groups = []
    for group in _ray_cluster_spec(_doc("RayCluster"))["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = float(group.get("rayStartParams", {}).get("num-cpus", limits["cpu"]))
        groups.append((cpus, float(limits["nvidia.com/gpu"]), group["maxReplicas"]))
    clusters["raycluster.yaml"] = groups
    return clusters


GPU_STUDIES = [
    p for p in sorted((ROOT / "studies").glob("*.yaml")) if "gpus_per_worker: 1" in p.read_text()
]


@pytest.mark.parametrize("study_path", GPU_STUDIES, ids=lambda p: p.name)
def test_gpu_studies_fit_the_shipped_clusters(study_path: Path) -> None:
    """A shipped GPU study can start on every shipped cluster: it names how many trials may
    wait for the autoscaler, and one GPU worker group's nodes hold a trial's workers (and the
    Tune driver of a multi-worker trial, which needs a little CPU on some node)."""
    from ncstudy.config import expand, load_study
    from ncstudy.study import TRAIN_DRIVER_CPU
    from ncstudy.trial import uses_train

    study = load_study(study_path)
    assert study.resources.max_concurrent_trials is not None, "nothing fits a cluster at zero"
    trial = expand(study)[0]
    r = trial.resources
    driver = TRAIN_DRIVER_CPU if uses_train(trial) else 0.0
    for cluster_name, groups in _cluster_node_groups().items():
        fits = []
        for cpus, gpus, max_nodes in groups:
            per_node = int(min(cpus // r.cpus_per_worker, gpus // r.gpus_per_worker))
            if per_node < 1 or max_nodes * per_node < r.workers_per_trial:
                fits.append(False)
                continue
            spare = max_nodes * cpus - r.workers_per_trial * r.cpus_per_worker
            fits.append(spare >= driver)
        assert any(fits), f"{study_path.name} does not fit {cluster_name} ({groups})"


def test_rayjob_runs_a_study_on_the_same_cluster_spec() -> None:
    """The RayJob's cluster is raycluster.yaml's, and its entrypoint is the ncstudy CLI."""
    rayjob = _doc("RayJob")
    assert rayjob["spec"]["rayClusterSpec"] == _doc("RayCluster")["spec"]
    entrypoint = rayjob["spec"]["entrypoint"].split()
    assert entrypoint[:3] == ["python", "-m", "ncstudy.run"]
    assert entrypoint[3].startswith("studies/") and entrypoint[3].endswith(".yaml")
    assert entrypoint[entrypoint.index("--address") + 1] == "auto"
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    # a stopped job gets time to end its runs KILLED (Ray's default is 3 s before SIGKILL)
    runtime_env = yaml.safe_load(rayjob["spec"]["runtimeEnvYAML"])
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    # resume on a new cluster: the Optuna storage comes from a Secret, never from the file
    head = _ray_cluster_spec(rayjob)["headGroupSpec"]["template"]["spec"]["containers"][0]
    optuna = next(e for e in head["env"] if e["name"] == "NCSTUDY_OPTUNA_STORAGE")
    assert "value" not in optuna and optuna["valueFrom"]["secretKeyRef"]["optional"] is True


@pytest.mark.parametrize("name,doc", [d for d in _k8s_docs() if _pod_templates(d[1])])
def test_k8s_images_resources_and_environment(name: str, doc: dict[str, Any]) -> None:
    """Pinned image, CPU/memory requests and limits, and the environment on every container."""
    version = _project()["version"]
    if doc["kind"] in ("RayCluster", "RayJob"):
        assert _ray_cluster_spec(doc)["rayVersion"] == _pins()["ray"]
    for template in _pod_templates(doc):
        assert template["spec"]["serviceAccountName"] == "ncstudy"
        for container in template["spec"]["containers"]:
            image = container["image"]
            assert image.rsplit(":", 1)[1] == version, f"{image}: tag must be {version}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][section]), container["name"]
            if container["name"] == "ray-job-submitter":
                continue  # only runs `ray job submit`
            env = _env(container)
            cluster.check_storage_path(
                env["NCSTUDY_STORAGE_PATH"], node_count=1, shared_fs=False, existing_cluster=True
            )
            if container["name"] in ("ray-head", "ray-worker"):
                assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


def test_mlflow_service_is_cluster_internal() -> None:
    """The MLflow server is reached by port-forward only: ClusterIP, one SQLite writer."""
    service = _doc("Service")
    assert service["spec"]["type"] == "ClusterIP" and service["metadata"]["name"] == "mlflow"
    deployment = _doc("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    args = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[:2] == ["mlflow", "server"] and args[args.index("--workers") + 1] == "1"


def test_k8s_schema_excerpt_refs_resolve_and_extractor_roots_exist() -> None:
    """Every $ref in the excerpt names a kept definition; the extractor's roots are all kept."""
    spec = importlib.util.spec_from_file_location("extract", SCHEMA_DIR / "extract_k8s_defs.py")
    extract_k8s_defs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extract_k8s_defs)
    defs = json.loads((SCHEMA_DIR / "k8s-v1.35-defs.json").read_text())["$defs"]
    excerpt = (SCHEMA_DIR / "kuberay-v1-excerpt.yaml").read_text()
    kuberay_defs = yaml.safe_load(excerpt)["$defs"]
    for ref in re.findall(r'\$ref: "#/\$defs/([^"]+)"', excerpt):
        assert ref in defs or ref in kuberay_defs, ref
    assert set(extract_k8s_defs.ROOTS) <= set(defs)


# ---------------------------------------------------------------------- container image


def test_dockerfile_pins_base_and_versions() -> None:
    """Pinned Python base, project installed with extras, version checks match the pins."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", base)
    assert match, f"base image {base} must be pinned to a full Python version"
    assert (int(match.group(1)), int(match.group(2))) == _python_minor()
    assert 'pip install ".[ffcv]"' in text
    pins = _pins()
    assert f"ray.__version__ == '{pins['ray']}'" in text
    assert f"== '{pins['torch']}'" in text and f"== '{pins['mlflow']}'" in text
    for package in ("pkg-config", "libturbojpeg0-dev", "libopencv-dev"):
        assert package in text
    # no .git in the image: the commit comes in as a build arg, read by ncstudy.tracking
    assert f"ENV {tracking.GIT_COMMIT_ENV}=${{{tracking.GIT_COMMIT_ENV}}}" in text
    assert f"ARG {tracking.GIT_COMMIT_ENV}=" in text
    ignored = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "ncstudy-runs", "data", "mlruns"} <= set(ignored)


def test_all_image_references_carry_the_project_version() -> None:
    """No `latest` and no other tag anywhere in infra/."""
    version = _project()["version"]
    refs = [
        ref
        for path in INFRA.rglob("*")
        if path.is_file() and path.suffix in {".yaml", ".md", ""}
        for ref in _image_refs(path.read_text())
    ]
    assert refs and all(ref.endswith(f":{version}") for ref in refs), refs


# -------------------------------------------------------- credentials, placeholders, docs

SECRET_PATTERNS = [
    r"A(KI|SI)A[0-9A-Z]{16}",  # AWS access key id
    r"(?i)aws_(secret_access_key|session_token)",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    r'"private_key(_id)?"\s*:',  # GCP service-account key file
    r"(?i)\b(password|passwd|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{12,}",
]


def _infra_texts() -> dict[str, str]:
    """Text of every file under infra/."""
    return {
        p.relative_to(INFRA).as_posix(): p.read_text()
        for p in INFRA.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_no_credentials_in_infra_files() -> None:
    """Credentials come from IAM roles / service accounts, never from files."""
    for name, text in _infra_texts().items():
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, text), f"{name} matches {pattern}"
    assert not re.search(SECRET_PATTERNS[0], "AKIA" + "Q" * 15)  # the pattern is not too loose
    assert re.search(SECRET_PATTERNS[0], "AKIA" + "Q" * 16)


def test_placeholders_and_files_are_documented() -> None:
    """Every REPLACE-ME value and every launcher/manifest file is explained in infra/README.md."""
    readme = (INFRA / "README.md").read_text()
    placeholders = {m for text in _infra_texts().values() for m in PLACEHOLDER.findall(text)}
    assert placeholders, "expected site-specific placeholders"
    assert {p for p in placeholders if p not in readme} == set()
    for path in LAUNCHER_FILES + K8S_FILES:
        assert path.relative_to(ROOT).as_posix() in readme, path.name
    for topic in ("ray up", "ray down", "ray dashboard", "port-forward", "mlflow", "--address"):
        assert topic in readme, topic


# ------------------------------------------------------------------- ncstudy.cluster


def test_resolve_address_prefers_cli_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """--address beats RAY_ADDRESS; blank counts as unset; nothing means a local instance."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(None) is None
    assert cluster.resolve_address("  ") is None
    assert cluster.resolve_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster.resolve_address(None) == "10.0.0.5:6379"
    assert cluster.resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert cluster.resolve_address(None) is None


@pytest.mark.parametrize(
    "path", ["s3://bucket/runs", "gs://b/p", "gcs://b/p", "abfs://c@acct/p", "S3://B/p"]
)
def test_check_storage_path_accepts_object_stores(path: str) -> None:
    """Object stores are shared by construction, on any number of nodes."""
    cluster.check_storage_path(path, node_count=8, shared_fs=False)


def test_check_storage_path_single_node_accepts_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node: a local folder (relative or absolute) is fine."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_storage_path("./ncstudy-runs", node_count=1)
    cluster.check_storage_path("/tmp/runs", node_count=1)


@pytest.mark.parametrize("path", ["/home/ray/runs", "./ncstudy-runs", "file:///data/runs"])
def test_check_storage_path_rejects_local_on_multi_node(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several nodes and a local path: an error that names the path, the count and the fix."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    with pytest.raises(ValueError) as info:
        cluster.check_storage_path(path, node_count=3)
    message = str(info.value)
    assert message.startswith(
        f"storage_path '{path}' is a local path but the Ray cluster has 3 nodes; "
        "use a shared location: s3://bucket/prefix, gs://bucket/prefix, or a path on a shared "
        "filesystem mounted at the same place on every node (NFS) and pass "
        "--storage-path / NCSTUDY_STORAGE_PATH"
    )


@pytest.mark.parametrize("path", ["/home/ray/runs", "file:///data/runs"])
def test_check_storage_path_existing_cluster_needs_shared_storage(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to a cluster whose head is its only node now (autoscaling from zero): a local
    path is refused all the same; object stores and declared-shared paths pass."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    with pytest.raises(ValueError, match="connected to an existing Ray cluster"):
        cluster.check_storage_path(path, node_count=1, existing_cluster=True)
    cluster.check_storage_path("s3://bucket/p", node_count=1, existing_cluster=True)
    cluster.check_storage_path(path, node_count=1, existing_cluster=True, shared_fs=True)
    cluster.check_storage_path(path, node_count=1)  # local mode: one machine, any folder


def test_check_tracking_uri_on_an_existing_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trials on other nodes log to MLflow: a server, or a store file declared shared."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_tracking_uri("http://mlflow:5000")
    cluster.check_tracking_uri("https://mlflow.example.org")
    cluster.check_tracking_uri("databricks")
    for local in ("sqlite:////runs/mlflow.db", "file:///runs/mlruns", "/runs/mlruns"):
        with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
            cluster.check_tracking_uri(local)
        cluster.check_tracking_uri(local, shared_fs=True)


def test_check_storage_path_shared_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    """An NFS path declared shared (flag or NCSTUDY_SHARED_FS=1) passes if absolute."""
    monkeypatch.delenv("NCSTUDY_SHARED_FS", raising=False)
    cluster.check_storage_path("/mnt/nfs/runs", node_count=4, shared_fs=True)
    monkeypatch.setenv("NCSTUDY_SHARED_FS", "1")
    cluster.check_storage_path("/mnt/nfs/runs", node_count=4)
    cluster.check_storage_path("file:///mnt/nfs/runs", node_count=4)
    with pytest.raises(ValueError, match="relative"):
        cluster.check_storage_path("nfs/runs", node_count=4)
    with pytest.raises(ValueError, match="local path"):  # the explicit flag wins over the env
        cluster.check_storage_path("/mnt/nfs/runs", node_count=4, shared_fs=False)


@pytest.mark.parametrize("path,count", [("http://host/x", 2), ("", 1), ("/x", 0)])
def test_check_storage_path_rejects_bad_input(path: str, count: int) -> None:
    """Unsupported schemes, empty paths and impossible node counts are errors."""
    with pytest.raises(ValueError):
        cluster.check_storage_path(path, node_count=count)


def _brute_force_fit(resources: dict[str, float], demand: dict[str, float]) -> int:
    """Place trials one by one until one no longer fits (independent of the closed form)."""
    left, placed = dict(resources), 0
    while all(left.get(name, 0.0) - amount >= -1e-9 for name, amount in demand.items()):
        left = {name: left.get(name, 0.0) - demand.get(name, 0.0) for name in left | demand}
        placed += 1
    return placed


@pytest.mark.parametrize(
    "resources,per_trial,expected",
    [
        # 2 workers x (4 CPU, 1 GPU) + 1 driver CPU = 9 CPU, 2 GPU: GPUs bind (4 // 2).
        (
            {"CPU": 32, "GPU": 4},
            {"workers_per_trial": 2, "cpus_per_worker": 4, "gpus_per_worker": 1},
            2,
        ),
        # CPU only, the 2-core dev box: 1 + 2 x 0.5 = 2 CPU per trial.
        ({"CPU": 2}, {"workers_per_trial": 2, "cpus_per_worker": 0.5}, 1),
        # Fractional GPUs: 4 trials share one GPU; CPU 8 // 2 = 4 as well.
        ({"CPU": 8, "GPU": 1}, {"gpus_per_worker": 0.25}, 4),
        # 0.1 x 3 in floats is 0.30000000000000004 > 0.3: still 3 trials.
        ({"CPU": 0.3}, {"cpus_per_worker": 0.1, "driver_cpus": 0.0}, 3),
        # Head with CPU 0 plus 3 GPU nodes of 8 CPU / 1 GPU.
        (
            {"CPU": 24, "GPU": 3, "memory": 1e11},
            {"workers_per_trial": 1, "cpus_per_worker": 6, "gpus_per_worker": 1},
            3,
        ),
    ],
)
def test_max_concurrent_trials_fits_the_cluster(
    resources: dict[str, float], per_trial: dict[str, Any], expected: int
) -> None:
    """Closed form agrees with the hand count and with placing trials one by one."""
    demand = cluster.trial_demand(per_trial)
    assert _brute_force_fit(resources, demand) == expected
    assert cluster.max_concurrent_trials(resources, per_trial, None) == expected
    assert cluster.max_concurrent_trials(resources, per_trial, 1) == 1
    assert cluster.max_concurrent_trials(resources, per_trial, 100) == expected


def test_max_concurrent_trials_errors_and_existing_clusters() -> None:
    """No fit is an error naming the need. An existing cluster may autoscale: the YAML's cap is
    used as given (even beyond what fits now); without a cap, what fits now, and nothing
    fitting (a 0-CPU head alone) asks for the cap."""
    gpu_trial = {"workers_per_trial": 2, "gpus_per_worker": 1}
    with pytest.raises(ValueError, match="GPU"):
        cluster.max_concurrent_trials({"CPU": 16}, gpu_trial, 4)
    assert cluster.max_concurrent_trials({"CPU": 0}, gpu_trial, 6, existing_cluster=True) == 6
    assert cluster.max_concurrent_trials({"CPU": 8, "GPU": 2}, gpu_trial, 6) == 1
    assert (
        cluster.max_concurrent_trials({"CPU": 8, "GPU": 4}, gpu_trial, None, existing_cluster=True)
        == 2
    )
    with pytest.raises(ValueError, match="set resources.max_concurrent_trials"):
        cluster.max_concurrent_trials({"CPU": 0}, gpu_trial, None, existing_cluster=True)
    with pytest.raises(ValueError, match="max_concurrent_trials"):
        cluster.max_concurrent_trials({"CPU": 8}, gpu_trial, 0)
    with pytest.raises(ValueError, match="workers_per_trial"):
        cluster.trial_demand({"workers_per_trial": 0})
    with pytest.raises(ValueError, match="gpus_per_worker"):
        cluster.trial_demand({"gpus_per_worker": -1})
    with pytest.raises(ValueError, match="gpu_per_worker"):
        cluster.trial_demand({"gpu_per_worker": 1})
    with pytest.raises(ValueError, match="no resources"):
        cluster.max_concurrent_trials({"CPU": 8}, {"cpus_per_worker": 0, "driver_cpus": 0}, None)
