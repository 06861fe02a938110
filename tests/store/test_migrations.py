"""Migrations: the hand-written history matches the ORM models on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from gateway.store import make_engine, migrate
from gateway.store.models import Base

APP_TABLES = set(Base.metadata.tables)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_database_matches_the_models(db_url: str) -> None:
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)
    assert _tables(db_url) >= APP_TABLES
    assert migrate.check(db_url) == []


def test_current_reports_the_head_revision_after_upgrade(db_url: str) -> None:
    migrate.upgrade(db_url)
    head = migrate.head()
    assert head is not None
    assert migrate.current(db_url) == head


def test_upgrade_is_idempotent(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.upgrade(db_url)
    assert migrate.current(db_url) == migrate.head()


def test_downgrade_base_removes_every_table(db_url: str) -> None:
    migrate.upgrade(db_url)
    migrate.downgrade(db_url, "base")
    # Only Alembic's own (now empty) bookkeeping table may remain.
    assert _tables(db_url) <= {"alembic_version"}
    assert migrate.current(db_url) is None
    migrate.upgrade(db_url)  # and the database can be built again
    assert migrate.check(db_url) == []


def test_check_reports_a_schema_that_drifted_from_the_models(db_url: str) -> None:
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_outbox_status_next_attempt_at")
    finally:
        engine.dispose()
    diffs = migrate.check(db_url)
    assert any(
        d[0] == "add_index" and d[1].name == "ix_outbox_status_next_attempt_at" for d in diffs
    )


def test_sqlite_parent_directories_are_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'gw.db'}"
    migrate.upgrade(url)
    assert (tmp_path / "deep" / "er" / "gw.db").is_file()


def test_migrations_never_import_the_orm_models() -> None:
    folder = migrate.migrations_dir()
    for script in [folder / "env.py", *sorted((folder / "versions").glob("*.py"))]:
        text = script.read_text(encoding="utf-8")
        assert "gateway.store.models" not in text.replace(
            "never import gateway.store.models", ""
        ), script


def test_migrations_dir_override_must_point_at_our_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(migrate.MIGRATIONS_DIR_ENV, str(tmp_path))
    with pytest.raises(migrate.MigrationsNotFoundError, match="not an imip-gateway"):
        migrate.migrations_dir()


def test_migrations_dir_override_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(migrate.migrations_dir(), copy)
    monkeypatch.setenv(migrate.MIGRATIONS_DIR_ENV, str(copy))
    assert migrate.migrations_dir() == copy
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    migrate.upgrade(url)
    assert migrate.current(url) == "0001"
