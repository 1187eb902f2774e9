"""Shared helpers of the tests/infra/test_infra_*.py checks: paths, the project's pins, the launcher
YAMLs as Ray loads them, and the KubeRay manifests with their strict schema validators."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

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
