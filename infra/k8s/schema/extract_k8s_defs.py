"""Regenerate k8s-v1.35-defs.json: the Kubernetes types that infra/k8s/ uses or the CRDs embed.

Source: the strict JSON schemas of Kubernetes v1.35.0 shipped in the PyPI package
kubernetes-validate 1.37.0 (Apache-2.0). Keeps the closure of the root types below, drops
"description" texts and rewrites references to "#/$defs/NAME". Run (no network besides PyPI):

    pip download --no-deps -d /tmp/kv kubernetes-validate==1.37.0
    unzip -q -o /tmp/kv/kubernetes_validate-1.37.0-py3-none-any.whl -d /tmp/kv
    python infra/k8s/schema/extract_k8s_defs.py \
        /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.35.0-local-strict/_definitions.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "io.k8s.api.core.v1.PodSpec",
    "io.k8s.api.core.v1.EnvVar",
    "io.k8s.api.core.v1.EnvFromSource",
    "io.k8s.api.core.v1.EnvVarSource",
    "io.k8s.api.core.v1.ResourceRequirements",
    "io.k8s.api.core.v1.SecurityContext",
    "io.k8s.api.core.v1.VolumeMount",
    "io.k8s.api.core.v1.ServiceSpec",
    "io.k8s.api.core.v1.ServiceStatus",
    # infra/k8s/mlflow.yaml
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
]
OUT = Path(__file__).with_name("k8s-v1.35-defs.json")


def _clean(node: Any) -> Any:
    """Drop descriptions and point every $ref at this file's own $defs."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "description":
                continue
            if key == "$ref":
                out[key] = "#/$defs/" + value.rsplit("/", 1)[-1]
            else:
                out[key] = _clean(value)
        return out
    if isinstance(node, list):
        return [_clean(item) for item in node]
    return node


def _refs(node: Any):
    """Yield the definition names that ``node`` refers to."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value.rsplit("/", 1)[-1]
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def main(definitions_path: str) -> None:
    """Write the closure of ROOTS from ``definitions_path`` to OUT."""
    defs = json.loads(Path(definitions_path).read_text())["$defs"]
    keep: dict[str, Any] = {}
    stack = list(ROOTS)
    while stack:
        name = stack.pop()
        if name not in keep:
            keep[name] = _clean(defs[name])
            stack.extend(_refs(defs[name]))
    doc = {
        "$comment": "Kubernetes v1.35.0 core/v1 types (strict) from kubernetes-validate 1.37.0; "
        "see README.md",
        "$defs": dict(sorted(keep.items())),
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    print(f"wrote {len(keep)} definitions to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
