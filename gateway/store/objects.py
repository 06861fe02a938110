"""Scheduling objects, their instances and attendee rows.

The unit of consistency is one (owner, UID).  On PostgreSQL, :func:`get_object` with
``lock=True`` first takes a transaction-scoped advisory lock derived from (owner, UID) and
then ``SELECT ... FOR UPDATE``s the row: two replicas handling messages about the same
event are serialised even when the object does not exist yet (a row lock alone cannot
lock a row that is about to be created).  SQLite has a single writer, and the store opens
write transactions with ``BEGIN IMMEDIATE``, so there the work is serialised already.

The upsert functions take only the fields to change (typed keyword arguments), so a REPLY
writes one attendee's PARTSTAT and reply SEQUENCE/DTSTAMP and nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import TypedDict, Unpack

from sqlalchemy import Select, bindparam, delete, func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from gateway.domain.addresses import normalise
from gateway.store.limits import check_key
from gateway.store.models import AttendeeRow, BusyRow, InstanceRow, ObjectRow

__all__ = [
    "AttendeeFields",
    "InstanceFields",
    "ObjectFields",
    "delete_attendee",
    "delete_instance",
    "delete_object",
    "get_attendee_rows",
    "get_instance",
    "get_object",
    "get_object_by_id",
    "instance_rows",
    "list_objects",
    "lock_key",
    "objects_with_uid",
    "touch_object",
    "upsert_attendee",
    "upsert_instance",
    "upsert_object",
]


class ObjectFields(TypedDict, total=False):
    """Settable columns of :class:`ObjectRow` (all optional: only given ones change)."""

    component: str
    role: str
    organizer: str | None
    organizer_sent_by: str | None
    sequence: int
    dtstamp: datetime | None
    status: str | None
    summary: str | None
    is_recurring: bool
    calendar_props: str
    timezones: str


class InstanceFields(TypedDict, total=False):
    """Settable columns of :class:`InstanceRow`."""

    recurrence_id_text: str | None
    this_and_future: bool
    sequence: int
    dtstamp: datetime | None
    start_utc: datetime | None
    end_utc: datetime | None
    status: str | None
    transp: str | None
    cancelled: bool
    component_text: str


class AttendeeFields(TypedDict, total=False):
    """Settable columns of :class:`AttendeeRow`."""

    partstat: str
    role: str
    rsvp: bool
    cutype: str
    delegated_to: str
    delegated_from: str
    sent_by: str | None
    member: str | None
    request_status: str | None
    schedule_status: str | None
    property_text: str
    reply_sequence: int | None
    reply_dtstamp: datetime | None
    replied_at: datetime | None


# Addresses inside these fields are compared by the engine, so they are stored normalised.
_ADDRESS_LIST_FIELDS = ("delegated_to", "delegated_from")
_ADDRESS_FIELDS = ("organizer", "organizer_sent_by", "sent_by")

_OBJECT_BY_KEY = select(ObjectRow).where(
    ObjectRow.owner == bindparam("owner"), ObjectRow.uid == bindparam("uid")
)
_OBJECTS_WITH_UID = (
    select(ObjectRow).where(ObjectRow.uid == bindparam("uid")).order_by(ObjectRow.owner)
)
_OBJECT_BY_KEY_LOCKED = _OBJECT_BY_KEY.with_for_update()
_INSTANCE_BY_KEY = select(InstanceRow).where(
    InstanceRow.object_id == bindparam("object_id"),
    InstanceRow.instance_key == bindparam("instance_key"),
)
_INSTANCES = (
    select(InstanceRow)
    .where(InstanceRow.object_id == bindparam("object_id"))
    .order_by(InstanceRow.instance_key)
)
_ATTENDEE_BY_KEY = select(AttendeeRow).where(
    AttendeeRow.object_id == bindparam("object_id"),
    AttendeeRow.instance_key == bindparam("instance_key"),
    AttendeeRow.address == bindparam("address"),
)


def _attendee_query(by_instance: bool, by_address: bool) -> Select[AttendeeRow]:
    stmt = select(AttendeeRow).where(AttendeeRow.object_id == bindparam("object_id"))
    if by_instance:
        stmt = stmt.where(AttendeeRow.instance_key == bindparam("instance_key"))
    if by_address:
        stmt = stmt.where(AttendeeRow.address.in_(bindparam("addresses", expanding=True)))
    return stmt.order_by(AttendeeRow.instance_key, AttendeeRow.address)


# Built once: this is the REPLY hot path, and building a select costs more CPU than
# running it on SQLite.  Keyed by (filter by instance_key, filter by addresses).
_ATTENDEE_QUERIES = {
    (by_instance, by_address): _attendee_query(by_instance, by_address)
    for by_instance in (False, True)
    for by_address in (False, True)
}
_ADVISORY_LOCK = select(func.pg_advisory_xact_lock(bindparam("key")))


def lock_key(owner: str, uid: str) -> int:
    """A signed 64-bit advisory-lock key for (owner, UID) on PostgreSQL."""
    digest = hashlib.sha256(f"{normalise(owner)}\x00{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _normalise_fields(fields: dict[str, object]) -> None:
    for name in _ADDRESS_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            fields[name] = normalise(value)
    for name in _ADDRESS_LIST_FIELDS:
        value = fields.get(name)
        if isinstance(value, str):
            fields[name] = " ".join(normalise(part) for part in value.split())


def get_object(s: Session, owner: str, uid: str, *, lock: bool = False) -> ObjectRow | None:
    """The owner's object with this UID, or ``None``.

    ``lock=True`` serialises the rest of the transaction against every other transaction
    working on the same (owner, UID), on any replica (PostgreSQL); see the module docstring.
    """
    params = {"owner": normalise(owner), "uid": uid}
    if lock and s.get_bind().dialect.name == "postgresql":
        s.execute(_ADVISORY_LOCK, {"key": lock_key(owner, uid)})
        return s.scalars(_OBJECT_BY_KEY_LOCKED, params).first()
    return s.scalars(_OBJECT_BY_KEY, params).first()


def get_object_by_id(s: Session, object_id: int) -> ObjectRow | None:
    """The object with this primary key, or ``None``."""
    return s.get(ObjectRow, object_id)


def upsert_object(
    s: Session, owner: str, uid: str, *, now: datetime, **fields: Unpack[ObjectFields]
) -> ObjectRow:
    """Create the (owner, UID) object or update the given fields; returns the row.

    Creating requires ``component`` and ``role``; a UID longer than
    :data:`~gateway.store.limits.MAX_KEY_BYTES` raises
    :class:`~gateway.store.limits.FieldTooLongError`.  ``version`` starts at 1 and the ORM bumps
    it on every UPDATE that changes something.
    """
    values: dict[str, object] = dict(fields)
    _normalise_fields(values)
    row = get_object(s, owner, uid)
    if row is None:
        missing = [name for name in ("component", "role") if name not in values]
        if missing:
            raise ValueError(f"creating object {uid!r} needs {', '.join(missing)}")
        check_key("UID", uid)
        row = ObjectRow(owner=normalise(owner), uid=uid, created_at=now, updated_at=now)
        for name, value in values.items():
            setattr(row, name, value)
        s.add(row)
    else:
        changed = False
        for name, value in values.items():
            if getattr(row, name) != value:
                setattr(row, name, value)
                changed = True
        if changed:
            row.updated_at = now
    s.flush()
    return row


def touch_object(s: Session, row: ObjectRow, now: datetime) -> None:
    """Mark an object changed (bumps ``version``) after instance or attendee changes.

    Instance and attendee rows live in their own tables; touching the object makes the
    optimistic-concurrency check and ``updated_at`` cover them too.
    """
    row.updated_at = now
    # Force the UPDATE (and so the version bump) even when ``now`` equals updated_at.
    flag_modified(row, "updated_at")
    s.flush()


def get_instance(s: Session, object_id: int, instance_key: str) -> InstanceRow | None:
    """One instance (``""`` = master) of an object, or ``None``."""
    params = {"object_id": object_id, "instance_key": instance_key}
    return s.scalars(_INSTANCE_BY_KEY, params).first()


def instance_rows(s: Session, object_id: int) -> list[InstanceRow]:
    """Every instance of an object, master (``""``) first, then by key."""
    return list(s.scalars(_INSTANCES, {"object_id": object_id}))


def upsert_instance(
    s: Session, object_id: int, instance_key: str, **fields: Unpack[InstanceFields]
) -> InstanceRow:
    """Create or update one instance; only the given fields change."""
    row = get_instance(s, object_id, instance_key)
    if row is None:
        check_key("instance key", instance_key)
        row = InstanceRow(object_id=object_id, instance_key=instance_key)
        s.add(row)
    for name, value in fields.items():
        setattr(row, name, value)
    s.flush()
    return row


def delete_instance(s: Session, object_id: int, instance_key: str) -> int:
    """Delete one instance and its attendee rows; returns the number of instances deleted."""
    s.execute(
        delete(AttendeeRow).where(
            AttendeeRow.object_id == object_id, AttendeeRow.instance_key == instance_key
        )
    )
    result = s.execute(
        delete(InstanceRow).where(
            InstanceRow.object_id == object_id, InstanceRow.instance_key == instance_key
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def delete_object(s: Session, object_id: int) -> bool:
    """Delete an object; instances, attendees and busy periods go with it (ON DELETE CASCADE)."""
    row = s.get(ObjectRow, object_id)
    if row is None:
        return False
    s.delete(row)
    s.flush()
    # Rows removed by the database cascade may still sit in the identity map.
    for obj in list(s.identity_map.values()):
        if isinstance(obj, InstanceRow | AttendeeRow | BusyRow) and obj.object_id == object_id:
            s.expunge(obj)
    return True


def get_attendee_rows(
    s: Session,
    object_id: int,
    addresses: Iterable[str] | None = None,
    instance_key: str | None = None,
) -> list[AttendeeRow]:
    """Attendee rows of an object, optionally only some addresses and/or one instance.

    Load only what a message needs: a REPLY from one attendee reads one row through the
    (object_id, instance_key, address) unique index, whatever the size of the event.
    """
    params: dict[str, object] = {"object_id": object_id, "instance_key": instance_key}
    if addresses is not None:
        wanted = sorted({normalise(addr) for addr in addresses})
        if not wanted:
            return []
        params["addresses"] = wanted
    stmt = _ATTENDEE_QUERIES[(instance_key is not None, addresses is not None)]
    return list(s.scalars(stmt, params))


def upsert_attendee(
    s: Session,
    object_id: int,
    instance_key: str,
    address: str,
    *,
    now: datetime,
    **fields: Unpack[AttendeeFields],
) -> AttendeeRow:
    """Create or update the attendee row for (object, instance_key, address).

    The address is normalised, so ``MAILTO:Bob@X`` and ``mailto:bob@x`` are one row.
    Only the given fields change; a new row gets the RFC 5545 defaults (NEEDS-ACTION,
    REQ-PARTICIPANT, INDIVIDUAL, RSVP FALSE) for the rest.
    """
    values: dict[str, object] = dict(fields)
    _normalise_fields(values)
    key = normalise(address)
    params = {"object_id": object_id, "instance_key": instance_key, "address": key}
    row = s.scalars(_ATTENDEE_BY_KEY, params).first()
    if row is None:
        check_key("attendee address", key)
        check_key("instance key", instance_key)
        row = AttendeeRow(object_id=object_id, instance_key=instance_key, address=key)
        s.add(row)
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at = now
    s.flush()
    return row


def delete_attendee(s: Session, object_id: int, instance_key: str, address: str) -> bool:
    """Remove one attendee row (e.g. the organiser removed that attendee)."""
    row = s.scalars(
        _ATTENDEE_BY_KEY,
        {"object_id": object_id, "instance_key": instance_key, "address": normalise(address)},
    ).first()
    if row is None:
        return False
    s.delete(row)
    s.flush()
    return True


def objects_with_uid(s: Session, uid: str) -> list[ObjectRow]:
    """Every owner's copy of one UID, ordered by owner (uses the uid index)."""
    return list(s.scalars(_OBJECTS_WITH_UID, {"uid": uid}))


def list_objects(
    s: Session, owner: str | None = None, limit: int = 100, offset: int = 0
) -> list[ObjectRow]:
    """Objects ordered by owner then UID (the unique index order)."""
    stmt = select(ObjectRow)
    if owner is not None:
        stmt = stmt.where(ObjectRow.owner == normalise(owner))
    stmt = stmt.order_by(ObjectRow.owner, ObjectRow.uid).limit(limit).offset(offset)
    return list(s.scalars(stmt))
