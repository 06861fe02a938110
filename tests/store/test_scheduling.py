"""Writing and loading decisions: batched attendee/instance writes keep change-order meaning.

``scheduling.apply`` buffers PutInstance/PutAttendee and writes them with one SELECT and
one executemany INSERT/UPDATE per table (issue 5).  These tests pin down that the stored
result is what applying the changes one by one would give, on SQLite and PostgreSQL,
and bound the number of statements (a count, never a time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from gateway.domain.ical import Component, Property
from gateway.domain.model import (
    AttendeeState,
    BusyPeriod,
    Change,
    DeleteAttendee,
    DeleteInstance,
    DeleteObject,
    ObjectHeader,
    PutAttendee,
    PutInstance,
    PutObject,
    ReplaceBusy,
    Role,
    StoredInstance,
)
from gateway.store import Store, objects, outbox, scheduling
from gateway.store.models import AttendeeRow, BusyRow, InstanceRow, ObjectRow

OWNER = "owner@example.org"
UID = "uid-batch"


def _header(summary: str = "Planning", sequence: int = 0) -> PutObject:
    return PutObject(
        ObjectHeader(
            owner=OWNER,
            uid=UID,
            component_type="VEVENT",
            role=Role.ORGANIZER,
            organizer=OWNER,
            sequence=sequence,
            summary=summary,
        )
    )


def _instance(key: str = "", summary: str = "Planning", sequence: int = 0) -> PutInstance:
    comp = Component("VEVENT", [Property("UID", UID), Property("SUMMARY", summary)])
    if key:
        comp.add(Property("RECURRENCE-ID", key))
    return PutInstance(StoredInstance(key=key, component=comp, sequence=sequence))


def _attendee(address: str, key: str = "", partstat: str = "NEEDS-ACTION") -> PutAttendee:
    prop = Property("ATTENDEE", "mailto:" + address, {"PARTSTAT": [partstat]})
    return PutAttendee(
        AttendeeState(instance_key=key, address=address, prop=prop, partstat=partstat)
    )


def _apply(store: Store, changes: Sequence[Change], now: datetime) -> int | None:
    def run(s: Session) -> int | None:
        _stored, object_id = scheduling.load(s, OWNER, UID)
        return scheduling.apply(s, OWNER, UID, object_id, changes, now)

    return store.run_sync(run)


def _attendees(store: Store, object_id: int) -> dict[tuple[str, str], tuple[str, datetime]]:
    rows = store.read_sync(objects.get_attendee_rows, object_id)
    return {(r.instance_key, r.address): (r.partstat, r.updated_at) for r in rows}


@contextmanager
def _statements(store: Store) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_new_object_with_many_attendees_is_written_in_a_constant_number_of_statements(
    store: Store, now: datetime
) -> None:
    changes: list[Change] = [_header(), _instance()]
    changes += [_attendee(f"a{i}@example.net") for i in range(200)]
    with _statements(store) as seen:
        oid = _apply(store, changes, now)
    assert oid is not None
    attendee_writes = [s for s in seen if "attendees" in s and not s.startswith("SELECT")]
    assert len(attendee_writes) == 1  # one executemany INSERT, no per-row statements
    assert len(seen) <= 8
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    assert len(stored.attendees) == 200
    assert stored.attendees[("", "a7@example.net")].prop.param("PARTSTAT") == "NEEDS-ACTION"
    assert stored.instances[""].component.text("SUMMARY") == "Planning"


def test_update_writes_only_changed_attendee_rows(store: Store, now: datetime) -> None:
    addresses = [f"a{i}@example.net" for i in range(50)]
    oid = _apply(store, [_header(), _instance(), *(_attendee(a) for a in addresses)], now)
    assert oid is not None
    later = now + timedelta(hours=1)
    changes: list[Change] = [_attendee(a) for a in addresses]
    changes[3] = _attendee("a3@example.net", partstat="ACCEPTED")
    changes.append(_attendee("new@example.net"))
    with _statements(store) as seen:
        _apply(store, changes, later)
    rows = _attendees(store, oid)
    assert rows[("", "a3@example.net")] == ("ACCEPTED", later)
    assert rows[("", "a4@example.net")] == ("NEEDS-ACTION", now)  # unchanged: not rewritten
    assert rows[("", "new@example.net")] == ("NEEDS-ACTION", later)
    assert len(rows) == 51
    writes = [s for s in seen if s.startswith(("INSERT INTO attendees", "UPDATE attendees"))]
    reads = [s for s in seen if s.startswith("SELECT") and "FROM attendees" in s]
    # One INSERT, one UPDATE; the rows the locked load read are not read again.
    assert (len(writes), len(reads)) == (2, 1)


def test_apply_without_a_locked_load_reads_the_existing_rows(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None
    change = _attendee("a@example.net", partstat="ACCEPTED")
    with _statements(store) as seen:
        store.run_sync(lambda s: scheduling.apply(s, OWNER, UID, oid, [change], now))
    assert len([q for q in seen if q.startswith("SELECT") and "FROM attendees" in q]) == 1
    assert _attendees(store, oid)[("", "a@example.net")][0] == "ACCEPTED"


def test_a_write_between_load_and_apply_is_not_hidden_by_what_the_load_read(
    store: Store, now: datetime
) -> None:
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None

    def run(s: Session) -> None:
        _stored, object_id = scheduling.load(s, OWNER, UID, addresses=frozenset({"a@example.net"}))
        assert object_id == oid
        objects.upsert_attendee(s, oid, "", "a@example.net", now=now, partstat="DECLINED")
        # The decision (made on what was loaded) stores NEEDS-ACTION: it must be written
        # although it equals the value the load saw.
        scheduling.apply(s, OWNER, UID, oid, [_attendee("a@example.net")], now)

    store.run_sync(run)
    assert _attendees(store, oid)[("", "a@example.net")][0] == "NEEDS-ACTION"


def test_creating_after_a_locked_load_found_nothing_does_not_look_again(
    store: Store, now: datetime
) -> None:
    with _statements(store) as seen:
        oid = _apply(store, [_header(), _instance()], now)
    assert oid is not None
    assert len([q for q in seen if q.startswith("SELECT") and "scheduling_objects" in q]) == 1


def test_two_puts_of_one_attendee_keep_the_later_values(store: Store, now: datetime) -> None:
    changes: list[Change] = [
        _header(),
        _instance(),
        _attendee("bob@example.net", partstat="TENTATIVE"),
        _attendee("bob@example.net", partstat="DECLINED"),
    ]
    oid = _apply(store, changes, now)
    assert oid is not None
    assert _attendees(store, oid)[("", "bob@example.net")][0] == "DECLINED"


def test_deletes_apply_in_change_order_around_buffered_puts(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance(), _instance("K1"), _attendee("x@example.net")], now)
    assert oid is not None
    changes: list[Change] = [
        _attendee("gone@example.net"),
        DeleteAttendee("", "gone@example.net"),  # put then delete: absent
        DeleteAttendee("", "x@example.net"),
        _attendee("x@example.net", partstat="ACCEPTED"),  # delete then put: present
        _attendee("y@example.net", key="K1"),
        DeleteInstance("K1"),  # takes the attendee put before it
        _instance("K1", summary="Moved"),
        _attendee("z@example.net", key="K1"),  # re-created after the delete
    ]
    _apply(store, changes, now)
    rows = _attendees(store, oid)
    assert set(rows) == {("", "x@example.net"), ("K1", "z@example.net")}
    assert rows[("", "x@example.net")][0] == "ACCEPTED"
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    assert stored.instances["K1"].component.text("SUMMARY") == "Moved"


def test_delete_object_then_recreate_in_one_apply(store: Store, now: datetime) -> None:
    first = _apply(store, [_header(), _instance(), _attendee("old@example.net")], now)
    changes: list[Change] = [
        _attendee("lost@example.net"),
        DeleteObject(OWNER, UID),
        _header(summary="Again"),
        _instance(summary="Again"),
        _attendee("new@example.net"),
    ]
    second = _apply(store, changes, now)
    assert first is not None
    assert second is not None  # SQLite may reuse the deleted row's id
    assert set(_attendees(store, second)) == {("", "new@example.net")}
    row = store.read_sync(objects.get_object_by_id, second)
    assert row is not None
    assert (row.summary, row.version) == ("Again", 1)


def test_a_new_object_written_in_several_segments_updates_its_own_rows(
    store: Store, now: datetime
) -> None:
    changes: list[Change] = [
        _header(),
        _instance(),
        _attendee("a@example.net"),
        DeleteAttendee("", "nobody@example.net"),  # ends the first segment
        _instance(summary="Renamed"),  # rows of the first segment exist now
        _attendee("a@example.net", partstat="ACCEPTED"),
    ]
    oid = _apply(store, changes, now)
    assert oid is not None
    assert _attendees(store, oid)[("", "a@example.net")][0] == "ACCEPTED"
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    assert stored.instances[""].component.text("SUMMARY") == "Renamed"


def test_instance_changes_are_batched_and_unchanged_instances_not_rewritten(
    store: Store, now: datetime
) -> None:
    keys = [f"2026120{i}T100000Z" for i in range(1, 6)]
    oid = _apply(store, [_header(), _instance(), *(_instance(k) for k in keys)], now)
    assert oid is not None
    changes: list[Change] = [_instance(), *(_instance(k) for k in keys)]
    changes[2] = _instance(keys[1], summary="Changed", sequence=2)
    with _statements(store) as seen:
        _apply(store, changes, now)
    writes = [s for s in seen if s.startswith(("INSERT INTO instances", "UPDATE instances"))]
    assert len(writes) == 1
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    assert stored.instances[keys[1]].component.text("SUMMARY") == "Changed"
    assert stored.instances[keys[1]].sequence == 2
    assert stored.instances[keys[0]].component.text("SUMMARY") == "Planning"


def test_version_is_bumped_once_per_apply_and_the_session_copy_stays_current(
    store: Store, now: datetime
) -> None:
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None
    later = now + timedelta(minutes=5)

    def run(s: Session) -> tuple[int, int]:
        row = objects.get_object_by_id(s, oid)  # an ORM copy held through the apply
        assert row is not None
        before = row.version
        scheduling.apply(
            s,
            OWNER,
            UID,
            oid,
            [_header(summary="New"), _attendee("a@example.net", "", "ACCEPTED")],
            later,
        )
        # The ORM copy must not be stale: a later ORM write in the same session succeeds.
        row.status = "CONFIRMED"
        s.flush()
        return before, row.version

    before, after = store.run_sync(run)
    assert after == before + 2  # one bump by the apply, one by the ORM flush
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.summary, row.status, row.version, row.updated_at) == (
        "New",
        "CONFIRMED",
        after,
        later,
    )


def test_attendee_only_change_touches_the_object(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None
    later = now + timedelta(minutes=5)
    _apply(store, [_attendee("a@example.net", partstat="ACCEPTED")], later)
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.version, row.updated_at) == (2, later)


def test_orm_attendee_rows_loaded_before_a_batch_are_not_stale(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None

    def run(s: Session) -> str:
        [old] = objects.get_attendee_rows(s, oid, ["a@example.net"])
        assert old.partstat == "NEEDS-ACTION"
        scheduling.apply(s, OWNER, UID, oid, [_attendee("a@example.net", "", "ACCEPTED")], now)
        [fresh] = objects.get_attendee_rows(s, oid, ["a@example.net"])
        return fresh.partstat

    assert store.run_sync(run) == "ACCEPTED"


def test_busy_periods_are_replaced_with_one_delete_and_one_insert(
    store: Store, now: datetime
) -> None:
    periods = tuple(
        BusyPeriod(now + timedelta(days=i), now + timedelta(days=i, hours=1), "BUSY", UID)
        for i in range(30)
    )
    oid = _apply(store, [_header(), _instance(), ReplaceBusy(periods)], now)
    assert oid is not None
    with _statements(store) as seen:
        _apply(store, [ReplaceBusy(periods[:10])], now)
    assert len([s for s in seen if "busy_periods" in s]) == 2
    found = store.read_sync(scheduling.busy_between, OWNER, now, now + timedelta(days=60))
    assert len(found) == 10


def test_loaded_components_are_independent_copies(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance()], now)
    assert oid is not None
    first = store.read_sync(scheduling.load_by_id, oid)
    assert first is not None
    first.instances[""].component.set("SUMMARY", "mutated by a caller")
    second = store.read_sync(scheduling.load_by_id, oid)
    assert second is not None
    assert second.instances[""].component.text("SUMMARY") == "Planning"


def test_rewritten_instance_text_is_loaded_fresh(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance()], now)
    assert oid is not None
    assert store.read_sync(scheduling.load_by_id, oid) is not None  # warms the parse cache
    _apply(store, [_instance(summary="Renamed")], now)
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    assert stored.instances[""].component.text("SUMMARY") == "Renamed"


def test_stored_rows_match_one_by_one_upserts(store: Store, now: datetime) -> None:
    """The batch path stores exactly what the per-row upsert functions store."""
    att = _attendee("Bob@Example.NET", partstat="ACCEPTED").attendee
    att.delegated_to = ("Carol@Example.NET",)
    att.sent_by = "MAILTO:Sec@Example.NET"
    oid = _apply(store, [_header(), _instance(), PutAttendee(att)], now)
    assert oid is not None

    def reference(s: Session) -> int:
        row = objects.upsert_object(
            s, OWNER, "uid-ref", now=now, component="VEVENT", role="organizer"
        )
        objects.upsert_attendee(
            s,
            row.id,
            "",
            "Bob@Example.NET",
            now=now,
            **scheduling._attendee_fields(att),  # the fields apply writes
        )
        return row.id

    ref = store.run_sync(reference)
    columns = [c for c in AttendeeRow.__table__.columns if c.name not in ("id", "object_id")]

    def values(s: Session, object_id: int) -> tuple[object, ...]:
        stmt = select(*columns).where(AttendeeRow.object_id == object_id)
        return tuple(s.execute(stmt).one())

    assert store.read_sync(values, oid) == store.read_sync(values, ref)
    assert store.read_sync(values, oid)[1] == "bob@example.net"
    head = store.read_sync(lambda s: s.get(ObjectRow, oid))
    assert head is not None
    assert head.version == 1


# --- Core hot path (issue 5): what a load read serves the apply, without ORM state ----


def test_a_reply_is_loaded_and_applied_in_four_statements(store: Store, now: datetime) -> None:
    """Object + instances in one SELECT, attendees in one, one attendee UPDATE, one bump."""
    oid = _apply(store, [_header(), _instance(), _instance("K"), _attendee("a@example.net")], now)
    assert oid is not None
    later = now + timedelta(minutes=1)
    with _statements(store) as seen:
        _apply(store, [_attendee("a@example.net", partstat="ACCEPTED")], later)
    ours = [
        s
        for s in seen
        if s.split()[0] in ("SELECT", "UPDATE", "INSERT", "DELETE") and "pg_advisory" not in s
    ]
    assert len(ours) == 4, ours
    assert ours[0].startswith("SELECT")
    assert "JOIN instances" in ours[0]
    assert not any("FROM scheduling_objects" in s for s in ours[1:])  # no second read
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.version, row.updated_at) == (2, later)
    assert _attendees(store, oid)[("", "a@example.net")] == ("ACCEPTED", later)


def test_a_single_attendee_update_writes_only_the_changed_columns(
    store: Store, now: datetime
) -> None:
    def chair(partstat: str) -> PutAttendee:
        att = _attendee("a@example.net", partstat=partstat).attendee
        att.role = "CHAIR"
        att.sent_by = "sec@example.net"
        return PutAttendee(att)

    oid = _apply(store, [_header(), _instance(), chair("NEEDS-ACTION")], now)
    assert oid is not None
    with _statements(store) as seen:
        _apply(store, [chair("DECLINED")], now)
    [write] = [s for s in seen if s.startswith("UPDATE attendees")]
    assert "partstat" in write
    assert "role" not in write
    assert "sent_by" not in write
    [row] = store.read_sync(objects.get_attendee_rows, oid)
    assert (row.partstat, row.role, row.sent_by) == ("DECLINED", "CHAIR", "sec@example.net")
    assert row.property_text.endswith("mailto:a@example.net")
    assert "PARTSTAT=DECLINED" in row.property_text


def test_load_returns_instances_in_key_order_and_an_object_without_instances(
    store: Store, now: datetime
) -> None:
    oid = _apply(store, [_header()], now)
    assert oid is not None
    bare = store.read_sync(scheduling.load_by_id, oid)
    assert bare is not None
    assert bare.instances == {}
    _apply(store, [_instance("K2"), _instance(), _instance("K1")], now)
    stored, loaded_id = store.run_sync(lambda s: scheduling.load(s, OWNER, UID))
    assert loaded_id == oid
    assert stored is not None
    assert list(stored.instances) == ["", "K1", "K2"]
    assert stored.header.summary == "Planning"
    assert store.read_sync(lambda s: scheduling.load(s, OWNER, "unknown")) == (None, None)


def _concurrent_bump(s: Session) -> None:
    """What another writer's committed change does to the row, behind the session's back.

    Plain SQL on the connection: an ORM-enabled UPDATE would also refresh the session's
    own copies, which a real concurrent writer cannot do.
    """
    s.connection().exec_driver_sql("UPDATE scheduling_objects SET version = version + 1")


def test_a_version_moved_after_the_load_fails_the_apply(store: Store, now: datetime) -> None:
    """The header snapshot keeps the ORM's optimistic check: no silent lost update."""
    oid = _apply(store, [_header(), _instance(), _attendee("a@example.net")], now)
    assert oid is not None

    def run(s: Session, changes: Sequence[Change]) -> None:
        _stored, object_id = scheduling.load(s, OWNER, UID)
        _concurrent_bump(s)
        scheduling.apply(s, OWNER, UID, object_id, changes, now)

    with pytest.raises(StaleDataError):
        store.run_sync(run, [_attendee("a@example.net", partstat="ACCEPTED")])  # touch
    with pytest.raises(StaleDataError):
        store.run_sync(run, [_header(summary="Renamed")])  # header UPDATE
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.summary, row.version) == ("Planning", 1)  # both rolled back


def test_header_writes_in_one_transaction_chain_their_versions(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance()], now)
    assert oid is not None

    def run(s: Session) -> None:
        _stored, object_id = scheduling.load(s, OWNER, UID)
        scheduling.apply(s, OWNER, UID, object_id, [_header(summary="One")], now)
        scheduling.apply(s, OWNER, UID, object_id, [_instance(summary="Two")], now)
        scheduling.apply(s, OWNER, UID, object_id, [_header(summary="Three")], now)

    store.run_sync(run)
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.summary, row.version) == ("Three", 4)


def test_a_new_object_with_busy_time_writes_no_delete(store: Store, now: datetime) -> None:
    periods = (BusyPeriod(now, now + timedelta(hours=1), "BUSY", UID),)
    with _statements(store) as seen:
        oid = _apply(store, [_header(), _instance(), ReplaceBusy(periods)], now)
    assert oid is not None
    assert not [s for s in seen if s.startswith("DELETE")]
    # A second ReplaceBusy in the same apply must replace, not add.
    _apply(store, [ReplaceBusy(periods), ReplaceBusy(periods)], now)
    found = store.read_sync(scheduling.busy_between, OWNER, now, now + timedelta(days=1))
    assert found == (BusyPeriod(now, now + timedelta(hours=1), "BUSY", UID),)


def test_deleting_an_object_cascades_and_keeps_its_outbox_rows(store: Store, now: datetime) -> None:
    periods = (BusyPeriod(now, now + timedelta(hours=1), "BUSY", UID),)
    oid = _apply(store, [_header(), _instance(), _attendee("a@x"), ReplaceBusy(periods)], now)
    assert oid is not None
    out_id = store.run_sync(
        lambda s: outbox.enqueue(
            s,
            owner=OWNER,
            sender=OWNER,
            recipient="a@x",
            method="REQUEST",
            uid=UID,
            payload=b"x",
            message_id="<m@x>",
            now=now,
            object_id=oid,
        )
    )
    assert _apply(store, [DeleteObject(OWNER, UID)], now) is None

    def remaining(s: Session) -> list[int]:
        return [
            len(s.execute(select(t).where(t.object_id == oid)).all())
            for t in (InstanceRow, AttendeeRow, BusyRow)
        ]

    assert store.read_sync(remaining) == [0, 0, 0]
    assert store.read_sync(objects.get_object_by_id, oid) is None
    sent = store.read_sync(outbox.get, out_id)
    assert sent is not None
    assert sent.object_id is None
    assert store.run_sync(lambda s: objects.delete_object(s, oid)) is False


def test_a_deletion_after_a_concurrent_change_fails(store: Store, now: datetime) -> None:
    oid = _apply(store, [_header(), _instance()], now)
    assert oid is not None

    def run(s: Session) -> None:
        _stored, object_id = scheduling.load(s, OWNER, UID)
        _concurrent_bump(s)
        scheduling.apply(s, OWNER, UID, object_id, [DeleteObject(OWNER, UID)], now)

    with pytest.raises(StaleDataError):
        store.run_sync(run)
    assert store.read_sync(objects.get_object_by_id, oid) is not None


def test_loaded_instance_components_are_parsed_only_when_read(
    store: Store, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 5: loading an object parses no instance text until the engine reads a
    component; then it reads exactly what was stored, once, after the transaction too."""
    oid = _apply(store, [_header(), _instance(), _instance(key="20261201T090000Z")], now)
    assert oid is not None
    parsed: list[str] = []
    real = scheduling._PARSED.parsed

    def counting(text: str) -> list[Component]:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(scheduling._PARSED, "parsed", counting)
    stored = store.read_sync(scheduling.load_by_id, oid)
    assert stored is not None
    timezones = len(parsed)  # the header's VTIMEZONE text is read eagerly
    master = stored.instances[""]
    assert master.sequence == 0  # plain columns need no parse
    assert len(parsed) == timezones
    assert master.component.text("SUMMARY") == "Planning"
    assert master.component.text("SUMMARY") == "Planning"
    assert len(parsed) == timezones + 1  # parsed once, on the first read
    override = stored.instances["20261201T090000Z"]
    assert override == StoredInstance(
        key="20261201T090000Z", component=override.component, sequence=0
    )
    assert override.component.value("RECURRENCE-ID") == "20261201T090000Z"
    assert len(parsed) == timezones + 2


def test_a_deferred_instance_equals_and_copies_like_an_eager_one() -> None:
    comp = Component("VEVENT", [Property("UID", UID), Property("SUMMARY", "Planning")])
    loads: list[int] = []

    def load() -> Component:
        loads.append(1)
        return comp.copy()

    fields: dict[str, Any] = {
        "key": "",
        "sequence": 3,
        "dtstamp": None,
        "this_and_future": False,
        "cancelled": False,
        "start": None,
        "end": None,
        "status": "CONFIRMED",
        "transp": "",
    }
    lazy = StoredInstance.deferred(load, **fields)
    assert loads == []
    eager = StoredInstance(component=comp, **fields)
    assert lazy == eager
    assert loads == [1]
    changed = replace(lazy, sequence=4)
    assert (changed.sequence, changed.component.text("SUMMARY")) == (4, "Planning")
    other = StoredInstance.deferred(load, **fields)
    other.component = Component("VTODO")  # assigning replaces the pending load
    assert other.component.name == "VTODO"
    assert loads == [1]
