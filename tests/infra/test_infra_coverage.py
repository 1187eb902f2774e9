"""Every file under infra/ comes with a check in tests/infra/."""

from __future__ import annotations

from infra_common import (
    INFRA,
    K8S_FILES,
    LAUNCHER_FILES,
)

# ------------------------------------------------------------- every file is checked


def test_every_infra_file_has_a_check() -> None:
    """A new file under infra/ must come with a validation in tests/infra/test_infra_*.py."""
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
    assert present - checked == set(), (
        "files under infra/ without a check in tests/infra/test_infra_*.py"
    )
    assert {"ray/aws.yaml", "ray/gcp.yaml"} <= present
    assert {"k8s/raycluster.yaml", "k8s/rayjob.yaml", "k8s/mlflow.yaml"} <= present
