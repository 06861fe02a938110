"""Shipped deployment files agree with the settings schema and the CI contract.

No Docker engine runs here, so the Dockerfile and docker-compose.yml are checked by
reading: every IMIP_GATEWAY_* variable they set must be a valid setting.
"""

from __future__ import annotations

import re
from pathlib import Path

from gateway.config import RESERVED_ENV, load_config

ROOT = Path(__file__).resolve().parents[2]


def _compose_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for match in re.finditer(r"^\s+(IMIP_GATEWAY_[A-Z0-9_]+):\s*(.+?)\s*$", text, re.M):
        value = match.group(2)
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = value[1:-1]
        env[match.group(1)] = value
    return env


def _dockerfile_environment() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(IMIP_GATEWAY_[A-Z0-9_]+)=(\S+)", line))
    return env


def test_compose_settings_are_valid_and_use_postgresql() -> None:
    env = _compose_environment()
    assert "IMIP_GATEWAY_DATABASE_URL" in env
    settings = load_config(None, {**_dockerfile_environment(), **env})
    assert settings.database.is_postgresql
    assert settings.listeners.smtp.host == "0.0.0.0"
    assert [u.address for u in settings.users] == ["alice@example.org", "room-101@example.org"]


def test_compose_publishes_ports_on_loopback_only() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    ports = re.findall(r'^\s+-\s+"?([0-9.:]+)"?\s*$', text, re.M)
    published = [p for p in ports if p.count(":") >= 1]
    assert published
    assert all(p.startswith("127.0.0.1:") for p in published), published


def test_dockerfile_runs_serve_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users
    assert users[-1] not in ("root", "0")
    assert text.rstrip().endswith('CMD ["imip-gateway", "serve"]')
    assert "IMIP_GATEWAY_MIGRATIONS_DIR" in RESERVED_ENV


def test_dockerfile_settings_are_valid() -> None:
    settings = load_config(None, _dockerfile_environment())
    assert settings.listeners.lmtp.host == "0.0.0.0"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "\n./scripts/test\n" in readme
    assert "\n./scripts/test\n" in ci
