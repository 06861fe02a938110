"""The suite's throwaway PostgreSQL really runs, and each test gets its own database."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.postgres


def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar_one()
    finally:
        engine.dispose()


def test_postgres_server_answers_select_1(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    assert _scalar(postgres_url, "SELECT 1") == 1
    assert str(_scalar(postgres_url, "SHOW server_version")).startswith("1")


def test_fresh_database_is_empty_and_separate(fresh_postgres_url: str, postgres_url: str) -> None:
    assert fresh_postgres_url != postgres_url
    tables = _scalar(
        fresh_postgres_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    assert tables == 0


def test_db_url_gives_an_empty_database_of_each_kind(db_url: str) -> None:
    assert db_url.startswith(("sqlite:///", "postgresql+psycopg://"))
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
            conn.execute(text("INSERT INTO probe (id) VALUES (1)"))
            assert conn.execute(text("SELECT count(*) FROM probe")).scalar_one() == 1
    finally:
        engine.dispose()
