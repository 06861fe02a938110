"""Engine settings: URL rewriting, SQLite pragmas, UTC timestamps."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from gateway.store import (
    Store,
    UnsupportedDatabaseError,
    backend_of,
    imap_state,
    make_engine,
    normalise_url,
)
from gateway.store.tx import writers_waiting
from gateway.store.types import NaiveUTCError
from tests.support.locks import file_lock_free


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@h/db", "postgres://u:p@h/db", "postgresql+psycopg2://u:p@h/db"],
)
def test_plain_postgresql_urls_are_rewritten_to_psycopg3(url: str) -> None:
    parsed = normalise_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert (parsed.host, parsed.database, parsed.username) == ("h", "db", "u")
    assert backend_of(url) == "postgresql"


def test_unsupported_scheme_is_refused_with_its_name() -> None:
    with pytest.raises(UnsupportedDatabaseError, match="mysql"):
        normalise_url("mysql://h/db")


def test_sqlite_pragmas_are_in_force_on_every_connection(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        for _ in range(2):  # a second pooled/new connection gets them too
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            engine.dispose()
    finally:
        engine.dispose()


def test_sqlite_store_transactions_take_the_write_lock_at_begin(sqlite_store: Store) -> None:
    """Inside run() another connection cannot start a writer: BEGIN IMMEDIATE holds the lock."""
    path = sqlite_store.engine.url.database
    assert path is not None

    def probe(s: Session) -> str:
        s.execute(text("SELECT 1"))  # the session connects (and BEGINs) lazily
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            return str(exc)
        finally:
            other.close()
        return "acquired"

    assert "locked" in sqlite_store.run_sync(probe)
    assert sqlite_store.read_sync(probe) == "acquired"  # reads use a deferred BEGIN


def test_timestamps_round_trip_as_aware_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 29, 3, 30, tzinfo=plus_two)

    def roundtrip(s: Session) -> datetime:
        imap_state.set(s, "acct", "INBOX", uidvalidity=1, last_uid=1, now=local)
        s.expire_all()
        state = imap_state.get(s, "acct", "INBOX")
        assert state is not None
        return state.updated_at

    got = store.run_sync(roundtrip)
    assert got == local
    assert got.utcoffset() == timedelta(0)
    assert (got.hour, got.minute) == (1, 30)


def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(StatementError) as info:  # SQLAlchemy wraps bind-processor errors
        store.run_sync(
            imap_state.set, "a", "INBOX", uidvalidity=1, last_uid=1, now=datetime(2026, 1, 1)
        )
    assert isinstance(info.value.orig, NaiveUTCError)
    assert store.read_sync(imap_state.get, "a", "INBOX") is None


def test_database_stores_naive_utc(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    store.run_sync(
        imap_state.set,
        "a",
        "INBOX",
        uidvalidity=1,
        last_uid=1,
        now=datetime(2026, 1, 1, 12, 0, tzinfo=plus_two),
    )
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT updated_at FROM imap_state")).scalar()
    if isinstance(raw, str):  # SQLite returns text for raw SQL
        raw = datetime.fromisoformat(raw)
    assert raw == datetime(2026, 1, 1, 10, 0)


def test_store_accepts_a_plain_postgresql_url(migrated_pg_url: str) -> None:
    plain = migrated_pg_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain)
    try:
        assert store.backend == "postgresql"
        assert store.engine.url.drivername == "postgresql+psycopg"
        assert store.read_sync(lambda s: s.execute(text("SELECT 1")).scalar()) == 1
    finally:
        store.close()


def _lock_file_free(path: str) -> bool:
    """Whether another process could take the writers' lock file right now."""
    return file_lock_free(f"{path}.write-lock")


def test_sqlite_writers_hold_the_lock_file_until_their_unit_of_work_ends(
    sqlite_store: Store,
) -> None:
    """The fast writer queue (issue 5): held from BEGIN IMMEDIATE to the end of the
    unit of work, released after a commit and after a failure, never taken by reads."""
    path = sqlite_store.engine.url.database
    assert path is not None

    def probe(s: Session) -> bool:
        s.execute(text("SELECT 1"))
        return _lock_file_free(path)

    assert sqlite_store.run_sync(probe) is False
    assert _lock_file_free(path)  # released after the commit
    assert sqlite_store.read_sync(probe) is True

    def fail(s: Session) -> None:
        s.execute(text("SELECT 1"))
        raise RuntimeError("unit of work failed")

    with pytest.raises(RuntimeError):
        sqlite_store.run_sync(fail)
    assert _lock_file_free(path)  # released after the rollback too


def test_a_second_writer_waits_for_the_first_and_then_writes(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """Two stores on one file (intake and processing, each in its own process in
    production): the second writer queues on the lock file, then proceeds after the
    first commits, instead of failing or interleaving."""
    url = str(sqlite_store.engine.url)
    other = Store(url)
    order: list[str] = []
    holding = threading.Event()

    def slow_writer(s: Session) -> None:
        s.execute(text("SELECT 1"))
        holding.set()
        time.sleep(0.3)
        order.append("first commits")

    def quick_writer(s: Session) -> None:
        s.execute(text("SELECT 1"))  # the session BEGINs (IMMEDIATE) lazily, here
        order.append("second begins")

    try:
        thread = threading.Thread(target=sqlite_store.run_sync, args=(slow_writer,))
        thread.start()
        assert holding.wait(10)
        other.run_sync(quick_writer)
        thread.join(10)
    finally:
        other.close()
    assert order == ["first commits", "second begins"]


def test_a_waiting_writer_is_visible_to_the_holder_until_it_gets_in(
    sqlite_store: Store,
) -> None:
    """``writers_waiting`` (issue 5): the holder of the write lock sees a writer queued
    behind it, so a processing group can end early; nobody waiting reads False."""
    other = Store(str(sqlite_store.engine.url))
    holding, seen_alone, seen_waiter = threading.Event(), [], []
    release = threading.Event()

    def holder(s: Session) -> None:
        s.execute(text("SELECT 1"))
        seen_alone.append(writers_waiting(s))
        holding.set()
        deadline = time.monotonic() + 10
        while not writers_waiting(s) and time.monotonic() < deadline:
            time.sleep(0.005)
        seen_waiter.append(writers_waiting(s))
        release.set()

    def waiter(s: Session) -> bool:
        s.execute(text("SELECT 1"))
        return writers_waiting(s)  # it got in: nobody is waiting behind it

    try:
        thread = threading.Thread(target=sqlite_store.run_sync, args=(holder,))
        thread.start()
        assert holding.wait(10)
        assert other.run_sync(waiter) is False
        thread.join(10)
    finally:
        other.close()
    assert release.is_set()
    assert seen_alone == [False]
    assert seen_waiter == [True]


def test_a_writer_beginning_again_lets_an_announced_waiter_go_first(
    sqlite_store: Store,
) -> None:
    """Fairness (issue 5): a writer that commits and begins again at once does not
    overtake a writer that was already waiting (which polls the lock file)."""
    other = Store(str(sqlite_store.engine.url))
    order: list[str] = []
    holding = threading.Event()

    def first(s: Session) -> None:
        s.execute(text("SELECT 1"))
        holding.set()
        deadline = time.monotonic() + 10
        while not writers_waiting(s) and time.monotonic() < deadline:
            time.sleep(0.002)
        order.append("first commits")

    def again(s: Session) -> None:
        s.execute(text("SELECT 1"))
        order.append("first begins again")

    def waiting(s: Session) -> None:
        s.execute(text("SELECT 1"))
        order.append("waiter writes")

    def run_twice() -> None:
        sqlite_store.run_sync(first)
        sqlite_store.run_sync(again)

    try:
        thread = threading.Thread(target=run_twice)
        thread.start()
        assert holding.wait(10)
        other.run_sync(waiting)
        thread.join(10)
    finally:
        other.close()
    assert order == ["first commits", "waiter writes", "first begins again"]


def test_writers_waiting_is_false_on_postgresql(pg_store: Store) -> None:
    """PostgreSQL has row locks and no database-wide writer: never a reason to yield."""
    assert (
        pg_store.run_sync(lambda s: (s.execute(text("SELECT 1")), writers_waiting(s))[1]) is False
    )
