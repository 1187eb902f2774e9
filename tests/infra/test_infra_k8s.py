"""The KubeRay manifests (infra/k8s/): strict validation against the KubeRay CRD excerpt and the
Kubernetes definitions kept in infra/k8s/schema/, misspelt fields, the head and GPU groups, the
shipped GPU studies fit the shipped clusters, images, resources and environment, MLflow service."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from infra_common import (
    LAUNCHER_FILES,
    ROOT,
    SCHEMA_DIR,
    _env,
    _k8s_docs,
    _k8s_errors,
    _load_launcher,
    _pins,
    _pod_templates,
    _prepared,
    _project,
    _ray_cluster_spec,
    _worker_types,
)

from ncstudy import cluster

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
