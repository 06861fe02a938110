"""Scheduling objects, instances and attendee rows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from gateway.store import MAX_KEY_BYTES, FieldTooLongError, Store, busy, objects, outbox
from gateway.store.models import AttendeeRow, BusyRow, InstanceRow, ObjectRow

BIG_SEQUENCE = 1407317367304  # seen from a real client; does not fit in 32 bits


def _create(s: Session, now: datetime, uid: str = "uid-1") -> int:
    row = objects.upsert_object(
        s,
        "MAILTO:Owner@Example.org",
        uid,
        now=now,
        component="VEVENT",
        role="attendee",
        organizer="mailto:Org@Example.org",
        sequence=BIG_SEQUENCE,
        dtstamp=now,
        summary="Planning",
    )
    return row.id


def test_upsert_object_creates_once_per_owner_and_uid(store: Store, now: datetime) -> None:
    first = store.run_sync(_create, now)
    second = store.run_sync(_create, now)
    assert first == second
    row = store.read_sync(objects.get_object, "owner@example.org", "uid-1")
    assert row is not None
    assert (row.owner, row.organizer, row.version) == ("owner@example.org", "org@example.org", 1)


def test_uid_is_case_sensitive_and_owner_scoped(store: Store, now: datetime) -> None:
    a = store.run_sync(_create, now, "uid-1")
    b = store.run_sync(_create, now, "UID-1")
    c = store.run_sync(
        lambda s: (
            objects.upsert_object(
                s, "other@x", "uid-1", now=now, component="VEVENT", role="organizer"
            ).id
        )
    )
    assert len({a, b, c}) == 3


def test_big_sequence_round_trips(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)

    def add(s: Session) -> None:
        objects.upsert_instance(
            s, oid, "", sequence=BIG_SEQUENCE + 1, component_text="BEGIN:VEVENT"
        )
        objects.upsert_attendee(
            s, oid, "", "a@x", now=now, reply_sequence=BIG_SEQUENCE + 2, reply_dtstamp=now
        )

    store.run_sync(add)
    row = store.read_sync(objects.get_object_by_id, oid)
    [inst] = store.read_sync(objects.instance_rows, oid)
    [att] = store.read_sync(objects.get_attendee_rows, oid)
    assert row is not None
    assert (row.sequence, inst.sequence, att.reply_sequence) == (
        BIG_SEQUENCE,
        BIG_SEQUENCE + 1,
        BIG_SEQUENCE + 2,
    )


def test_update_changes_only_given_fields_and_bumps_version(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)
    later = now + timedelta(hours=1)
    row = store.run_sync(
        lambda s: objects.upsert_object(
            s, "owner@example.org", "uid-1", now=later, sequence=BIG_SEQUENCE + 1
        )
    )
    assert (row.id, row.version, row.updated_at, row.created_at) == (oid, 2, later, now)
    assert (row.summary, row.sequence) == ("Planning", BIG_SEQUENCE + 1)
    # An update that changes nothing does not bump the version.
    same = store.run_sync(
        lambda s: objects.upsert_object(
            s, "owner@example.org", "uid-1", now=later, summary="Planning"
        )
    )
    assert same.version == 2


def test_creating_an_object_requires_component_and_role(store: Store, now: datetime) -> None:
    with pytest.raises(ValueError, match="component, role"):
        store.run_sync(lambda s: objects.upsert_object(s, "o@x", "u", now=now))


def test_concurrent_modification_is_detected_by_version(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)
    with Session(store.engine, expire_on_commit=False) as s1:
        stale = s1.get(ObjectRow, oid)  # read version 1 ...
        assert stale is not None
        s1.commit()

        # ... another writer changes the object meanwhile ...
        def touch(s: Session) -> None:
            row = objects.get_object_by_id(s, oid)
            assert row is not None
            objects.touch_object(s, row, now)

        store.run_sync(touch)
        # ... so writing back what was read must fail, not overwrite silently.
        stale.summary = "lost update"
        with pytest.raises(StaleDataError):
            s1.flush()
        s1.rollback()
    row = store.read_sync(objects.get_object_by_id, oid)
    assert row is not None
    assert (row.summary, row.version) == ("Planning", 2)


def test_attendee_rows_are_unique_per_object_instance_and_normalised_address(
    store: Store, now: datetime
) -> None:
    oid = store.run_sync(_create, now)

    def add(s: Session) -> None:
        objects.upsert_attendee(
            s, oid, "", "MAILTO:Bob@X.org", now=now, partstat="NEEDS-ACTION", rsvp=True
        )
        objects.upsert_attendee(s, oid, "", "mailto:bob@x.org", now=now, partstat="ACCEPTED")
        objects.upsert_attendee(
            s, oid, "20261201T100000Z", "bob@x.org", now=now, partstat="DECLINED"
        )

    store.run_sync(add)
    rows = store.read_sync(objects.get_attendee_rows, oid)
    assert [(r.instance_key, r.address, r.partstat, r.rsvp) for r in rows] == [
        ("", "bob@x.org", "ACCEPTED", True),  # the update kept RSVP it was not given
        ("20261201T100000Z", "bob@x.org", "DECLINED", False),
    ]

    def duplicate(s: Session) -> None:
        s.execute(
            insert(AttendeeRow).values(
                object_id=oid,
                instance_key="",
                address="bob@x.org",
                partstat="X",
                role="R",
                rsvp=False,
                cutype="I",
                delegated_to="",
                delegated_from="",
                property_text="",
                updated_at=now,
            )
        )

    with pytest.raises(IntegrityError):
        store.run_sync(duplicate)


def test_new_attendee_gets_rfc5545_defaults_and_normalised_delegation(
    store: Store, now: datetime
) -> None:
    oid = store.run_sync(_create, now)
    row = store.run_sync(
        lambda s: objects.upsert_attendee(
            s, oid, "", "c@x", now=now, delegated_to="MAILTO:D@X  mailto:E@x", sent_by="MAILTO:S@X"
        )
    )
    assert (row.partstat, row.role, row.cutype, row.rsvp) == (
        "NEEDS-ACTION",
        "REQ-PARTICIPANT",
        "INDIVIDUAL",
        False,
    )
    assert (row.delegated_to, row.sent_by) == ("d@x e@x", "s@x")


def test_get_attendee_rows_loads_only_what_is_asked(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)

    def add(s: Session) -> None:
        for i in range(50):
            objects.upsert_attendee(s, oid, "", f"a{i}@x", now=now)
        objects.upsert_attendee(s, oid, "K", "a1@x", now=now)

    store.run_sync(add)
    one = store.read_sync(objects.get_attendee_rows, oid, ["MAILTO:A7@X"], "")
    assert [(r.instance_key, r.address) for r in one] == [("", "a7@x")]
    both = store.read_sync(objects.get_attendee_rows, oid, ["a1@x"])
    assert [(r.instance_key, r.address) for r in both] == [("", "a1@x"), ("K", "a1@x")]
    assert len(store.read_sync(objects.get_attendee_rows, oid, None, "")) == 50
    assert store.read_sync(objects.get_attendee_rows, oid, []) == []


def test_reply_timestamps_round_trip_as_utc(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)
    stamp = datetime(2026, 11, 21, 9, 15, tzinfo=timezone(timedelta(hours=-5)))
    store.run_sync(
        lambda s: objects.upsert_attendee(
            s, oid, "", "a@x", now=now, reply_dtstamp=stamp, replied_at=now
        )
    )
    [row] = store.read_sync(objects.get_attendee_rows, oid)
    assert row.reply_dtstamp == stamp
    assert row.reply_dtstamp is not None
    assert row.reply_dtstamp.tzinfo == UTC
    assert row.reply_dtstamp.hour == 14


def test_instances_are_unique_per_key_and_updated_in_place(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)

    def add(s: Session) -> None:
        objects.upsert_instance(s, oid, "", sequence=1, component_text="M")
        objects.upsert_instance(
            s,
            oid,
            "20261201T100000Z",
            sequence=2,
            component_text="O",
            recurrence_id_text="RECURRENCE-ID:20261201T100000Z",
            start_utc=now,
            end_utc=now + timedelta(hours=1),
        )
        objects.upsert_instance(s, oid, "20261201T100000Z", sequence=3, cancelled=True)

    store.run_sync(add)
    rows = store.read_sync(objects.instance_rows, oid)
    assert [(r.instance_key, r.sequence, r.cancelled, r.component_text) for r in rows] == [
        ("", 1, False, "M"),
        ("20261201T100000Z", 3, True, "O"),
    ]
    assert rows[1].end_utc == now + timedelta(hours=1)


def test_delete_instance_removes_its_attendees_only(store: Store, now: datetime) -> None:
    oid = store.run_sync(_create, now)

    def add(s: Session) -> None:
        objects.upsert_instance(s, oid, "", component_text="M")
        objects.upsert_instance(s, oid, "K", component_text="O")
        objects.upsert_attendee(s, oid, "", "a@x", now=now)
        objects.upsert_attendee(s, oid, "K", "a@x", now=now)

    store.run_sync(add)
    assert store.run_sync(objects.delete_instance, oid, "K") == 1
    assert [r.instance_key for r in store.read_sync(objects.instance_rows, oid)] == [""]
    assert [r.instance_key for r in store.read_sync(objects.get_attendee_rows, oid)] == [""]
    assert store.run_sync(objects.delete_instance, oid, "K") == 0


def test_delete_object_cascades_to_instances_attendees_and_busy_time(
    store: Store, now: datetime
) -> None:
    oid = store.run_sync(_create, now)
    keep = store.run_sync(_create, now, "uid-keep")

    def add(s: Session) -> int:
        for target in (oid, keep):
            objects.upsert_instance(s, target, "", component_text="M")
            objects.upsert_attendee(s, target, "", "a@x", now=now)
            busy.replace_periods(
                s, target, "owner@example.org", [busy.BusyPeriod(now, now + timedelta(hours=1))]
            )
        return outbox.enqueue(
            s,
            owner="o@x",
            sender="o@x",
            recipient="a@x",
            method="REPLY",
            uid="uid-1",
            payload=b"x",
            message_id="<m@x>",
            now=now,
            object_id=oid,
        )

    out_id = store.run_sync(add)
    assert store.run_sync(objects.delete_object, oid) is True
    assert store.run_sync(objects.delete_object, oid) is False

    def counts(s: Session) -> tuple[int, ...]:
        return tuple(
            int(
                s.scalar(select(func.count()).select_from(model).where(model.object_id == oid)) or 0
            )
            for model in (InstanceRow, AttendeeRow, BusyRow)
        )

    assert store.read_sync(counts) == (0, 0, 0)
    # Other objects are untouched, and the outbox keeps its mail (object link cleared).
    assert len(store.read_sync(objects.instance_rows, keep)) == 1
    sent = store.read_sync(outbox.get, out_id)
    assert sent is not None
    assert sent.object_id is None


def test_foreign_keys_are_enforced(store: Store, now: datetime) -> None:
    with pytest.raises(IntegrityError):
        store.run_sync(lambda s: objects.upsert_instance(s, 999_999, "", component_text="x"))


def test_list_objects_orders_by_owner_and_uid(store: Store, now: datetime) -> None:
    store.run_sync(_create, now, "b")
    store.run_sync(_create, now, "a")
    store.run_sync(
        lambda s: objects.upsert_object(
            s, "aaa@x", "z", now=now, component="VTODO", role="organizer"
        )
    )
    listed = store.read_sync(objects.list_objects)
    assert [(r.owner, r.uid) for r in listed] == [
        ("aaa@x", "z"),
        ("owner@example.org", "a"),
        ("owner@example.org", "b"),
    ]
    mine = store.read_sync(objects.list_objects, "Owner@Example.org", 1, 1)
    assert [r.uid for r in mine] == ["b"]


def test_lock_serialises_work_on_one_object_across_connections(
    pg_store: Store, now: datetime
) -> None:
    """A second transaction cannot lock the same (owner, UID), even before it exists."""
    from sqlalchemy import text

    with Session(pg_store.engine) as holder, Session(pg_store.engine) as other:
        holder.begin()
        assert objects.get_object(holder, "o@x", "new-uid", lock=True) is None
        other.begin()
        other.execute(text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            objects.get_object(other, "O@X", "new-uid", lock=True)
        other.rollback()
        # Another UID is independent.
        other.begin()
        assert objects.get_object(other, "o@x", "another-uid", lock=True) is None
        other.rollback()
        holder.rollback()


def test_the_hot_path_load_takes_the_same_locks(pg_store: Store, now: datetime) -> None:
    """object_with_instances(lock=True) serialises like get_object, object or not."""
    from sqlalchemy import text

    pg_store.run_sync(_create, now)
    for uid in ("uid-1", "not-yet-created"):
        with Session(pg_store.engine) as holder, Session(pg_store.engine) as other:
            holder.begin()
            objects.object_with_instances(holder, "owner@example.org", uid, lock=True)
            other.begin()
            other.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError, match="lock timeout"):
                objects.get_object(other, "Owner@Example.org", uid, lock=True)
            other.rollback()
            holder.rollback()
    # The object row itself is locked too (FOR UPDATE OF scheduling_objects), not only
    # the advisory key: a plain row lock from elsewhere waits.
    with Session(pg_store.engine) as holder, Session(pg_store.engine) as other:
        holder.begin()
        found = objects.object_with_instances(holder, "owner@example.org", "uid-1", lock=True)
        assert found is not None
        other.begin()
        other.execute(text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            other.execute(
                text("SELECT id FROM scheduling_objects WHERE id = :id FOR UPDATE"),
                {"id": found[0]["id"]},
            )
        other.rollback()
        holder.rollback()


def test_lock_is_released_at_commit(pg_store: Store, now: datetime) -> None:
    done = threading.Event()
    pg_store.run_sync(lambda s: objects.get_object(s, "o@x", "u", lock=True))

    def second() -> None:
        pg_store.run_sync(lambda s: objects.get_object(s, "o@x", "u", lock=True))
        done.set()

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=30)
    assert done.is_set()


def test_a_reply_to_a_large_event_loads_one_attendee_row(store: Store, now: datetime) -> None:
    """ARCHITECTURE section 3: a REPLY touches one row, whatever the size of the event."""
    oid = store.run_sync(_create, now)

    def seed(s: Session) -> None:
        s.execute(
            insert(AttendeeRow),
            [
                {
                    "object_id": oid,
                    "instance_key": "",
                    "address": f"a{i}@x",
                    "partstat": "NEEDS-ACTION",
                    "role": "REQ-PARTICIPANT",
                    "rsvp": True,
                    "cutype": "INDIVIDUAL",
                    "delegated_to": "",
                    "delegated_from": "",
                    "property_text": f"ATTENDEE;RSVP=TRUE:mailto:a{i}@x",
                    "updated_at": now,
                }
                for i in range(1000)
            ],
        )

    store.run_sync(seed)

    def reply(s: Session) -> int:
        obj = objects.get_object(s, "owner@example.org", "uid-1", lock=True)
        assert obj is not None
        [loaded] = objects.get_attendee_rows(s, obj.id, ["A500@X"], "")
        assert loaded.partstat == "NEEDS-ACTION"
        objects.upsert_attendee(
            s,
            obj.id,
            "",
            "a500@x",
            now=now,
            partstat="ACCEPTED",
            reply_sequence=BIG_SEQUENCE,
            reply_dtstamp=now,
        )
        return sum(isinstance(o, AttendeeRow) for o in s.identity_map.values())

    assert store.run_sync(reply) == 1
    [row] = store.read_sync(objects.get_attendee_rows, oid, ["a500@x"])
    assert (row.partstat, row.reply_sequence) == ("ACCEPTED", BIG_SEQUENCE)
    untouched = store.read_sync(objects.get_attendee_rows, oid, ["a499@x"])
    assert untouched[0].partstat == "NEEDS-ACTION"


def test_objects_with_uid_finds_every_owners_copy(store: Store, now: datetime) -> None:
    store.run_sync(_create, now, "shared")
    store.run_sync(
        lambda s: objects.upsert_object(
            s, "a@x", "shared", now=now, component="VEVENT", role="organizer"
        )
    )
    store.run_sync(_create, now, "other")
    rows = store.read_sync(objects.objects_with_uid, "shared")
    assert [(r.owner, r.role) for r in rows] == [
        ("a@x", "organizer"),
        ("owner@example.org", "attendee"),
    ]


def test_overlong_keys_are_refused_with_a_specific_error(store: Store, now: datetime) -> None:
    long_uid = "u" * (MAX_KEY_BYTES + 1)
    with pytest.raises(FieldTooLongError, match="UID is 901 bytes"):
        store.run_sync(
            lambda s: objects.upsert_object(
                s, "o@x", long_uid, now=now, component="VEVENT", role="attendee"
            )
        )
    oid = store.run_sync(_create, now)
    with pytest.raises(FieldTooLongError, match="attendee address"):
        store.run_sync(lambda s: objects.upsert_attendee(s, oid, "", "a" * 2000 + "@x", now=now))
    # Exactly at the limit is fine, on PostgreSQL too (index entries stay below its cap).
    at_limit = "é" * (MAX_KEY_BYTES // 2)
    store.run_sync(
        lambda s: objects.upsert_object(
            s, "o@x", at_limit, now=now, component="VEVENT", role="attendee"
        )
    )
    assert store.read_sync(objects.get_object, "o@x", at_limit) is not None
