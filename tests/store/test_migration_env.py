"""migrations/env.py used the other ways: by URL from the environment, from asyncio, installed."""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from gateway.store import migrate

REPO = Path(__file__).resolve().parents[2]


def test_env_takes_the_url_from_the_environment_and_leaves_logging_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    monkeypatch.setenv("IMIP_GATEWAY_DATABASE_URL", url)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    command.upgrade(cfg, "head")
    assert migrate.current(url) == migrate.head()
    assert (root.handlers, root.level) == (handlers, level)


def test_env_takes_the_url_from_x_argument(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    cfg = Config(cmd_opts=_x_args(f"url={url}"))
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    command.upgrade(cfg, "head")
    assert migrate.current(url) == migrate.head()


def _x_args(*values: str) -> argparse.Namespace:
    return argparse.Namespace(x=list(values))


async def test_upgrade_can_run_from_an_asyncio_program(db_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, db_url)
    assert await asyncio.to_thread(migrate.current, db_url) == migrate.head()


def test_installed_package_finds_its_packaged_migrations(tmp_path: Path) -> None:
    """Lay the package out as `pip install .` does (no checkout next to it) and upgrade."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "gateway", site / "gateway")
    shutil.copytree(REPO / "migrations", site / "gateway" / "_migrations")
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    code = (
        "from gateway.store import migrate; print(migrate.migrations_dir()); "
        f"migrate.upgrade({url!r}); print(migrate.current({url!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(site / "gateway" / "_migrations"), migrate.head()]


def test_pyproject_ships_the_migrations_and_every_subpackage() -> None:
    """A wheel without migrations cannot create its database: guard the packaging config."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools.get("package-dir", {}).get("gateway._migrations") == "migrations", (
        "pyproject.toml must map gateway._migrations to migrations/ (see gateway/store/migrate.py)"
    )
    packages = set(setuptools.get("packages", []))
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "gateway").rglob("__init__.py")
    }
    missing = (on_disk | {"gateway._migrations", "gateway._migrations.versions"}) - packages
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_offline_mode_renders_the_schema_as_sql(tmp_path: Path) -> None:
    buffer = io.StringIO()
    cfg = Config(output_buffer=buffer)
    cfg.set_main_option("script_location", str(migrate.migrations_dir()))
    cfg.attributes["url"] = "postgresql://u@h/db"  # never connected to in offline mode
    command.upgrade(cfg, "head", sql=True)
    sql = buffer.getvalue()
    assert "CREATE TABLE scheduling_objects" in sql
    assert "CREATE INDEX ix_outbox_status_next_attempt_at" in sql
    assert "BIGINT" in sql  # SEQUENCE columns are 64-bit


def test_revision_helper_writes_a_script_that_does_not_import_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.migrations_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv(migrate.MIGRATIONS_DIR_ENV, str(copy))
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    migrate.upgrade(url)
    migrate.revision(url, "nothing changed")
    [script] = [p for p in (copy / "versions").glob("*.py") if p.name != "0001_initial.py"]
    text = script.read_text()
    assert "down_revision: str | None = '0001'" in text
    assert "gateway.store.models" not in text.replace("never import gateway.store.models", "")
    migrate.upgrade(url)  # the empty revision applies cleanly
    assert migrate.current(url) == migrate.head() != "0001"
