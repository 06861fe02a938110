"""Schema migrations, driven programmatically (no alembic.ini needed).

Where the migration scripts are found, in order:

1. ``IMIP_GATEWAY_MIGRATIONS_DIR`` (an explicit override, e.g. for packagers);
2. ``migrations/`` next to the ``gateway`` package -- a source checkout or an editable
   install;
3. ``gateway/_migrations`` inside the installed package -- the copy a regular
   ``pip install .`` ships (pyproject maps the top-level ``migrations/`` folder there).

All functions are synchronous; an asyncio caller runs them in a thread.  Every command
runs inside one transaction on the gateway's own engine (so SQLite gets its pragmas and
parent directories), and PostgreSQL and SQLite both apply DDL transactionally: a failed
upgrade leaves the previous schema intact.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL

from gateway.store.engine import make_engine, normalise_url

__all__ = [
    "MIGRATIONS_DIR_ENV",
    "MigrationsNotFoundError",
    "check",
    "current",
    "downgrade",
    "head",
    "migrations_dir",
    "revision",
    "upgrade",
]

MIGRATIONS_DIR_ENV = "IMIP_GATEWAY_MIGRATIONS_DIR"
# Written in migrations/env.py; tells our folder apart from another project's "migrations".
_MARKER = "Alembic environment of imip-gateway"


class MigrationsNotFoundError(RuntimeError):
    """No usable migrations folder was found."""


def _is_ours(path: Path) -> bool:
    env = path / "env.py"
    try:
        return env.is_file() and _MARKER in env.read_text(encoding="utf-8")
    except OSError:
        return False


def migrations_dir() -> Path:
    """The folder holding ``env.py`` and ``versions/`` (see the module docstring)."""
    override = os.environ.get(MIGRATIONS_DIR_ENV)
    if override:
        path = Path(override).expanduser()
        if not _is_ours(path):
            raise MigrationsNotFoundError(
                f"{MIGRATIONS_DIR_ENV}={override} is not an imip-gateway migrations folder"
            )
        return path
    package = Path(__file__).resolve().parent.parent  # .../gateway
    checkout = package.parent / "migrations"
    if _is_ours(checkout):
        return checkout
    packaged = Path(str(resources.files("gateway").joinpath("_migrations")))
    if _is_ours(packaged):
        return packaged
    raise MigrationsNotFoundError(
        f"no migrations found in {checkout} or {packaged}; set {MIGRATIONS_DIR_ENV}"
    )


def _config(connection: Connection | None = None, **attributes: Any) -> Config:
    cfg = Config()
    # ConfigParser interpolates "%": escape it in paths.
    cfg.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    cfg.attributes.update(attributes)
    return cfg


@contextmanager
def _connection(url: str | URL) -> Iterator[Connection]:
    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest)."""
    with _connection(url) as conn:
        command.upgrade(_config(conn), revision)


def downgrade(url: str | URL, revision: str) -> None:
    """Downgrade to ``revision`` (``"base"`` removes every table of the gateway)."""
    with _connection(url) as conn:
        command.downgrade(_config(conn), revision)


def current(url: str | URL) -> str | None:
    """The revision the database is at, or ``None`` for an empty/unmanaged database."""
    with _connection(url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    """The newest revision shipped with this version of the gateway."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def check(url: str | URL) -> list[Any]:
    """Differences between the database schema and the ORM models (empty = in sync).

    Uses Alembic's autogenerate comparison (tables, columns, types, nullability, indexes,
    unique constraints, foreign keys); each item is an Alembic diff tuple.
    """
    from gateway.store.models import Base  # only the checker needs the models

    with _connection(url) as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def revision(url: str | URL, message: str, *, autogenerate: bool = True) -> None:
    """Developer helper: write a new revision file comparing ``url`` with the models.

    The generated file must then be edited so it no longer depends on today's models
    (it never imports them, but check the types it spells).
    """
    from gateway.store.models import Base

    with _connection(url) as conn:
        cfg = _config(conn, target_metadata=Base.metadata)
        command.revision(cfg, message=message, autogenerate=autogenerate)


def display_url(url: str | URL) -> str:
    """The URL with its password masked, for logs and CLI output."""
    return normalise_url(url).render_as_string(hide_password=True)
