"""The container image (infra/docker/): pinned base and versions, one image tag everywhere."""

from __future__ import annotations

import re

from infra_common import (
    INFRA,
    _image_refs,
    _pins,
    _project,
    _python_minor,
)

from ncstudy import tracking

# ---------------------------------------------------------------------- container image


def test_dockerfile_pins_base_and_versions() -> None:
    """Pinned Python base, project installed with extras, version checks match the pins."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", base)
    assert match, f"base image {base} must be pinned to a full Python version"
    assert (int(match.group(1)), int(match.group(2))) == _python_minor()
    assert 'pip install ".[ffcv,cluster,gpu]"' in text
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
