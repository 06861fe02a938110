"""Fixtures for store tests: a migrated database of each kind and a Store on it.

Databases come from the shared fixtures (tests/conftest.py): ``db_url`` (an empty SQLite
file or PostgreSQL database; PostgreSQL missing fails in CI and skips elsewhere),
``sqlite_url`` and ``postgres_server``.  Repository tests need a *migrated* database; on
PostgreSQL one template database is migrated once per session and each test gets a
``CREATE DATABASE ... TEMPLATE`` copy, which is several times faster than migrating anew.
Migration tests themselves use ``db_url`` and migrate from empty.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from gateway.store import Store, migrate
from tests.support.postgres import PostgresServer

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
_TEMPLATE = "store_test_template"


@pytest.fixture(scope="session")
def pg_template(postgres_server: PostgresServer) -> str:
    """Name of a PostgreSQL database migrated to head, used as a template."""
    import psycopg

    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_TEMPLATE}"')
        conn.execute(f'CREATE DATABASE "{_TEMPLATE}"')
    migrate.upgrade(postgres_server.url(_TEMPLATE))
    return _TEMPLATE


@pytest.fixture
def migrated_pg_url(postgres_server: PostgresServer, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database at the newest schema; dropped afterwards."""
    import psycopg

    name = f"store_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str) -> str:
    migrate.upgrade(sqlite_url)
    return sqlite_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def migrated_url(request: pytest.FixtureRequest) -> str:
    """A database of each kind at the newest schema; the test runs once per kind."""
    fixture = "migrated_sqlite_url" if request.param == "sqlite" else "migrated_pg_url"
    return str(request.getfixturevalue(fixture))


def _store(url: str) -> Iterator[Store]:
    s = Store(url, pool_size=4)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def store(migrated_url: str) -> Iterator[Store]:
    """A Store on each kind of database."""
    yield from _store(migrated_url)


@pytest.fixture
def pg_store(migrated_pg_url: str) -> Iterator[Store]:
    """A Store on PostgreSQL only (for behaviour SQLite cannot have, e.g. SKIP LOCKED)."""
    yield from _store(migrated_pg_url)


@pytest.fixture
def sqlite_store(migrated_sqlite_url: str) -> Iterator[Store]:
    """A Store on SQLite only (for SQLite locking behaviour)."""
    yield from _store(migrated_sqlite_url)


@pytest.fixture
def now() -> datetime:
    return NOW
