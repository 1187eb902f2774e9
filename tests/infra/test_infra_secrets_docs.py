"""No credentials in infra/ files; every placeholder and file documented in infra/README.md."""

from __future__ import annotations

import re

from infra_common import (
    INFRA,
    K8S_FILES,
    LAUNCHER_FILES,
    PLACEHOLDER,
    ROOT,
)

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
