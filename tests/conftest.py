"""Shared fixtures: databases for every test that needs one.

* ``sqlite_url``: a fresh SQLite file per test.
* ``postgres_server`` / ``postgres_url``: one throwaway PostgreSQL server per session
  (tests/support/postgres.py).  Missing PostgreSQL skips the test on a developer
  machine and FAILS it in CI (``CI=true``), so CI can never go green without it.
* ``db_url``: parametrised over sqlite and postgresql; each test gets an empty
  database (on PostgreSQL a new ``CREATE DATABASE`` per test, dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, PostgresUnavailable, running_postgres


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL is required in CI (CI=true): {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {exc}")


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy URL (postgresql+psycopg) of the session server's ``postgres`` database."""
    return postgres_server.url()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a SQLite file that does not exist yet."""
    return f"sqlite:///{tmp_path / 'gateway.sqlite3'}"


@pytest.fixture
def fresh_postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; dropped afterwards."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.url(name)
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        # FORCE: a pool the test forgot to close must not keep the database alive.
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each supported kind; the test runs once per kind."""
    fixture = "sqlite_url" if request.param == "sqlite" else "fresh_postgres_url"
    return str(request.getfixturevalue(fixture))
