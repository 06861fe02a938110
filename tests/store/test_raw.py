"""The raw statement layer: same SQL, same conversions and same errors as SQLAlchemy.

Every test runs on SQLite and PostgreSQL (the ``store`` fixture), comparing what the raw
path writes and reads with what SQLAlchemy's own execution writes and reads.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    bindparam,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from gateway.store import Store
from gateway.store.models import JournalRow, ObjectRow
from gateway.store.raw import Prepared, UnsupportedStatementError
from gateway.store.types import NaiveUTCError

_JOURNAL = cast(Table, JournalRow.__table__)
_OBJECTS = cast(Table, ObjectRow.__table__)

_INSERT_JOURNAL = Prepared(insert(_JOURNAL).returning(_JOURNAL.c.id))
_READ_JOURNAL = Prepared(
    select(
        _JOURNAL.c.id,
        _JOURNAL.c.envelope_to,
        _JOURNAL.c.raw,
        _JOURNAL.c.received_at,
        _JOURNAL.c.processed_at,
        _JOURNAL.c.attempts,
    ).where(_JOURNAL.c.id == bindparam("p_id"))
)
_SET_PROCESSED = Prepared(
    update(_JOURNAL)
    .where(_JOURNAL.c.id == bindparam("p_id"), _JOURNAL.c.status == "pending")
    .values(processed_at=bindparam("p_at", type_=_JOURNAL.c.processed_at.type), status="done")
)
_INSERT_OBJECT = Prepared(insert(_OBJECTS))
_READ_FLAGS = Prepared(
    select(_OBJECTS.c.uid, _OBJECTS.c.is_recurring, _OBJECTS.c.sequence).order_by(_OBJECTS.c.uid)
)

# A zone east of UTC: a value stored without conversion would read back 2 hours off.
_CEST = timezone(timedelta(hours=2))
_WHEN = datetime(2026, 3, 29, 3, 30, 15, 123456, tzinfo=_CEST)


def _journal_values(sha: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "message_id": f"<{sha}@x>",
        "sha256": sha,
        "source": "smtp",
        "envelope_from": "a@x",
        "envelope_to": ["b@x", "c@x"],
        "recipients_key": sha,
        "raw": b"\x00\xffbytes",
        "size": 7,
        "received_at": _WHEN,
        "status": "pending",
        "attempts": 0,
    }
    values.update(extra)
    return values


def _via_sqlalchemy(s: Session, journal_id: int) -> tuple[Any, ...]:
    row = s.execute(_READ_JOURNAL.statement, {"p_id": journal_id}).one()
    return tuple(row)


def test_values_written_raw_read_back_by_sqlalchemy_and_raw_alike(store: Store) -> None:
    def unit(s: Session) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        new_id = _INSERT_JOURNAL.scalar(s, _journal_values("a" * 64))
        return _via_sqlalchemy(s, new_id), _READ_JOURNAL.first(s, {"p_id": new_id})

    by_sqlalchemy, raw = store.run_sync(unit)
    assert raw == by_sqlalchemy
    assert raw is not None
    _id, envelope_to, data, received_at, processed_at, attempts = raw
    assert envelope_to == ["b@x", "c@x"]  # JSON decoded
    assert data == b"\x00\xffbytes"
    assert type(data) is bytes
    # Stored as naive UTC, returned aware UTC: the same instant, in UTC.
    assert received_at == _WHEN
    assert received_at.tzinfo is UTC
    assert received_at.hour == 1
    assert processed_at is None
    assert attempts == 0


def test_values_written_by_sqlalchemy_are_read_raw_with_the_same_conversions(
    store: Store,
) -> None:
    def unit(s: Session) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        stmt = insert(_JOURNAL).returning(_JOURNAL.c.id)
        new_id = s.execute(stmt, _journal_values("b" * 64)).scalar_one()
        return _via_sqlalchemy(s, new_id), _READ_JOURNAL.first(s, {"p_id": new_id})

    by_sqlalchemy, raw = store.run_sync(unit)
    assert raw == by_sqlalchemy
    assert raw is not None
    assert raw[3].tzinfo is UTC


def test_update_applies_literal_values_and_reports_matched_rows(store: Store) -> None:
    def unit(s: Session) -> tuple[int, int, tuple[Any, ...] | None]:
        new_id = _INSERT_JOURNAL.scalar(s, _journal_values("c" * 64))
        first = _SET_PROCESSED.execute(s, {"p_id": new_id, "p_at": _WHEN})
        # The literal ``status = 'pending'`` guard no longer matches.
        second = _SET_PROCESSED.execute(s, {"p_id": new_id, "p_at": _WHEN})
        return first, second, _READ_JOURNAL.first(s, {"p_id": new_id})

    first, second, row = store.run_sync(unit)
    assert (first, second) == (1, 0)
    assert row is not None
    assert row[4] == _WHEN
    assert row[4].tzinfo is UTC


def test_booleans_scalar_defaults_and_executemany(store: Store) -> None:
    base = {
        "owner": "o@x",
        "component": "VEVENT",
        "role": "attendee",
        "created_at": _WHEN,
        "updated_at": _WHEN,
        "version": 1,
    }

    def unit(s: Session) -> list[tuple[Any, ...]]:
        # No ``sequence``/``is_recurring``: the columns' scalar defaults apply, as in Core.
        _INSERT_OBJECT.execute_many(s, [{**base, "uid": "u1"}, {**base, "uid": "u2"}])
        _INSERT_OBJECT.execute(s, {**base, "uid": "u3", "is_recurring": True, "sequence": 4})
        return _READ_FLAGS.rows(s, {})

    rows = store.run_sync(unit)
    assert rows == [("u1", False, 0), ("u2", False, 0), ("u3", True, 4)]
    assert all(type(flag) is bool for _uid, flag, _seq in rows)


def test_naive_datetime_is_refused_as_sqlalchemy_refuses_it(store: Store) -> None:
    naive = _journal_values("d" * 64, received_at=datetime(2026, 1, 1))

    def raw(s: Session) -> None:
        _INSERT_JOURNAL.scalar(s, naive)

    def core(s: Session) -> None:
        s.execute(insert(_JOURNAL), naive)

    for unit in (raw, core):
        with pytest.raises(StatementError) as caught:
            store.run_sync(unit)
        assert isinstance(caught.value.orig, NaiveUTCError)


def test_driver_errors_are_wrapped_in_sqlalchemys_classes(store: Store) -> None:
    def unit(s: Session) -> None:
        values = _journal_values("e" * 64)
        _INSERT_JOURNAL.scalar(s, values)
        _INSERT_JOURNAL.scalar(s, values)  # same (sha256, message_id, recipients_key)

    with pytest.raises(IntegrityError):
        store.run_sync(unit)
    assert store.read_sync(_READ_FLAGS.rows, {}) == []


def test_raw_statements_share_the_transaction_and_its_savepoints(store: Store) -> None:
    def unit(s: Session) -> tuple[int, int]:
        kept = _INSERT_JOURNAL.scalar(s, _journal_values("f" * 64))
        try:
            with s.begin_nested():
                gone = _INSERT_JOURNAL.scalar(s, _journal_values("g" * 64))
                assert _READ_JOURNAL.first(s, {"p_id": gone}) is not None
                raise RuntimeError("roll back the savepoint")
        except RuntimeError:
            pass
        return kept, gone

    kept, gone = store.run_sync(unit)
    assert store.read_sync(_READ_JOURNAL.first, {"p_id": kept}) is not None
    assert store.read_sync(_READ_JOURNAL.first, {"p_id": gone}) is None


def test_raw_statements_in_nested_savepoints_roll_back_only_their_own_writes(
    store: Store,
) -> None:
    # The raw path remembers the session's connection; each savepoint must still be
    # emitted (SQLAlchemy emits SAVEPOINT at the first connection() inside begin_nested).
    def rolled_back(s: Session, ids: list[int], digit: str) -> None:
        # An insert in a savepoint that then fails: only that savepoint is undone.
        with contextlib.suppress(RuntimeError), s.begin_nested():
            ids.append(_INSERT_JOURNAL.scalar(s, _journal_values(digit * 64)))
            raise RuntimeError(f"roll back the savepoint of {digit}")

    def unit(s: Session) -> list[int]:
        ids = [_INSERT_JOURNAL.scalar(s, _journal_values("1" * 64))]
        with s.begin_nested():
            ids.append(_INSERT_JOURNAL.scalar(s, _journal_values("2" * 64)))
            rolled_back(s, ids, "3")  # nested inside the savepoint of 2
            ids.append(_INSERT_JOURNAL.scalar(s, _journal_values("4" * 64)))
        rolled_back(s, ids, "5")  # a second savepoint at the top level
        ids.append(_INSERT_JOURNAL.scalar(s, _journal_values("6" * 64)))
        return ids

    assert len(store.run_sync(unit)) == 6
    kept = store.read_sync(lambda s: [r[0] for r in s.execute(select(_JOURNAL.c.sha256))])
    assert sorted(kept) == [c * 64 for c in "1246"]


def test_raw_statements_are_refused_after_a_failed_flush_as_sqlalchemy_refuses_them(
    store: Store,
) -> None:
    from sqlalchemy.exc import InvalidRequestError

    def unit(s: Session) -> None:
        first = _INSERT_JOURNAL.scalar(s, _journal_values("7" * 64))
        s.add(JournalRow(id=first, **_journal_values("8" * 64)))  # the same primary key
        with pytest.raises(IntegrityError):
            s.flush()
        with pytest.raises(InvalidRequestError, match="rolled back"):
            _READ_JOURNAL.first(s, {"p_id": first})
        raise RuntimeError("done")

    with pytest.raises(RuntimeError, match="done"):
        store.run_sync(unit)


def test_a_failed_unit_of_work_rolls_back_raw_writes(store: Store) -> None:
    def unit(s: Session) -> None:
        _INSERT_JOURNAL.scalar(s, _journal_values("h" * 64))
        raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        store.run_sync(unit)
    rows = store.read_sync(lambda s: s.execute(select(_JOURNAL.c.id)).all())
    assert rows == []


def test_cursor_listeners_see_raw_statements(store: Store) -> None:
    seen: list[tuple[str, bool]] = []

    def listen(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        seen.append((statement, many))

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        store.run_sync(_READ_FLAGS.rows, {})
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)
    assert [(sql.split()[0], many) for sql, many in seen if "scheduling_objects" in sql] == [
        ("SELECT", False)
    ]


def test_a_missing_parameter_is_an_error_not_a_null(store: Store) -> None:
    with pytest.raises(StatementError, match="p_id"):
        store.read_sync(_READ_JOURNAL.first, {})


def test_statements_compiled_per_execution_are_refused(store: Store) -> None:
    expanding = Prepared(
        select(_JOURNAL.c.id).where(_JOURNAL.c.id.in_(bindparam("ids", expanding=True)))
    )
    with pytest.raises(UnsupportedStatementError):
        store.read_sync(expanding.rows, {"ids": [1, 2]})
    computed = Table("computed", MetaData(), Column("n", Integer, default=lambda: 1))
    with pytest.raises(UnsupportedStatementError):
        store.read_sync(Prepared(insert(computed)).execute, {})


def test_pending_orm_changes_are_flushed_first_as_session_execute_does(store: Store) -> None:
    def unit(s: Session) -> list[tuple[Any, ...]]:
        s.add(
            ObjectRow(
                owner="o@x",
                uid="pending",
                component="VEVENT",
                role="attendee",
                created_at=_WHEN,
                updated_at=_WHEN,
                version=1,
            )
        )
        return _READ_FLAGS.rows(s, {})

    assert store.run_sync(unit) == [("pending", False, 0)]


def test_savepoints_are_emitted_and_seen_by_listeners(store: Store) -> None:
    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    def unit(s: Session) -> None:
        with s.begin_nested():
            _READ_FLAGS.rows(s, {})
        try:
            with s.begin_nested():
                _READ_FLAGS.rows(s, {})
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        store.run_sync(unit)
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)
    control = [sql for sql in seen if "SAVEPOINT" in sql or sql.startswith("BEGIN")]
    if store.backend == "sqlite":
        assert control[0] == "BEGIN IMMEDIATE"
        control = control[1:]
    assert [sql.rsplit(" ", 1)[0] for sql in control] == [
        "SAVEPOINT",
        "RELEASE SAVEPOINT",
        "SAVEPOINT",
        "ROLLBACK TO SAVEPOINT",
    ]


def test_echo_logs_raw_statements(migrated_url: str, caplog: pytest.LogCaptureFixture) -> None:
    echoing = Store(migrated_url, echo=True)
    try:
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            echoing.read_sync(_READ_JOURNAL.first, {"p_id": 7})
    finally:
        echoing.close()
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("SELECT journal.id") for m in logged)
    assert any(m.startswith("[raw]") and "7" in m for m in logged)
