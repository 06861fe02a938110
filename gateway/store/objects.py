"""Scheduling objects, their instances and attendee rows.

The unit of consistency is one (owner, UID).  On PostgreSQL, :func:`get_object` with
``lock=True`` first takes a transaction-scoped advisory lock derived from (owner, UID) and
then ``SELECT ... FOR UPDATE``s the row: two replicas handling messages about the same
event are serialised even when the object does not exist yet (a row lock alone cannot
lock a row that is about to be created).  SQLite has a single writer, and the store opens
write transactions with ``BEGIN IMMEDIATE``, so there the work is serialised already.

The upsert functions take only the fields to change (typed keyword arguments), so a REPLY
writes one attendee's PARTSTAT and reply SEQUENCE/DTSTAMP and nothing else.

Hot path (issue 5): writing a decision used to cost a SELECT + INSERT/UPDATE + ORM flush
per attendee and instance.  :func:`put_attendees` and :func:`put_instances` write many rows
with one SELECT (none for a new object) and one executemany INSERT and UPDATE each, and
skip rows whose values did not change.  Object-header writes (:func:`put_object`,
:func:`touch_object`) are single Core UPDATEs built once at import with ``bindparam`` and
run on the raw path (:mod:`gateway.store.raw`: compiled once, executed on the
transaction's DB-API cursor); they keep the ``version`` check of the ORM's
``version_id_col`` and copy the new values into an ORM row already loaded in the session,
so that row never becomes stale.  Readers for :mod:`~gateway.store.scheduling`
(:func:`object_with_instances`, :func:`attendee_records`) return plain dicts by column
name: no identity map, no ORM state, which matters when a 1000-attendee object is
loaded; the object row and its instances come in one joined SELECT.  The load leaves the
object row in ``Session.info`` (the "header snapshot", see below), so the
:func:`put_object` / :func:`touch_object` of the same decision know the current values
and the ``version`` read without an ORM instance or a second SELECT, and still refuse to
write over a change made since (StaleDataError, as the ORM's ``version_id_col`` does).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, TypedDict, Unpack, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified, set_committed_value
from sqlalchemy.orm.exc import StaleDataError

from gateway.domain.addresses import normalise
from gateway.store.limits import check_key
from gateway.store.models import AttendeeRow, BusyRow, InstanceRow, ObjectRow
from gateway.store.raw import Prepared

__all__ = [
    "AttendeeFields",
    "InstanceFields",
    "ObjectFields",
    "ObjectWrite",
    "attendee_records",
    "delete_attendee",
    "delete_instance",
    "delete_object",
    "get_attendee_rows",
    "get_instance",
    "get_object",
    "get_object_by_id",
    "instance_records",
    "instance_rows",
    "list_objects",
    "lock_key",
    "object_record",
    "object_record_by_id",
    "object_with_instances",
    "object_with_instances_by_id",
    "objects_with_uid",
    "put_attendees",
    "put_instances",
    "put_object",
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


#: What :func:`put_object` did to the object row.
ObjectWrite = Literal["created", "updated", "unchanged"]

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
_ADVISORY_LOCK = Prepared(select(func.pg_advisory_xact_lock(bindparam("key"))))

# --- Core statements of the write path, built once (see the module docstring) -------

_OBJECTS = cast(Table, ObjectRow.__table__)
_INSTANCES_T = cast(Table, InstanceRow.__table__)
_ATTENDEES_T = cast(Table, AttendeeRow.__table__)

_OBJECT_FIELDS: tuple[str, ...] = tuple(ObjectFields.__annotations__)
_INSTANCE_FIELDS: tuple[str, ...] = tuple(InstanceFields.__annotations__)
_ATTENDEE_FIELDS: tuple[str, ...] = tuple(AttendeeFields.__annotations__)


def _column_defaults(table: Table, names: Iterable[str]) -> dict[str, object]:
    """The Python-side defaults of ``names`` (None where the column has none).

    Core executemany needs every row to carry the same keys, so a new row is completed
    with the same defaults the ORM would have applied.
    """
    out: dict[str, object] = {}
    for name in names:
        default = table.c[name].default
        out[name] = getattr(default, "arg", None) if default is not None else None
    return out


_OBJECT_DEFAULTS = _column_defaults(_OBJECTS, _OBJECT_FIELDS)
_INSTANCE_DEFAULTS = _column_defaults(_INSTANCES_T, _INSTANCE_FIELDS)
_ATTENDEE_DEFAULTS = _column_defaults(_ATTENDEES_T, _ATTENDEE_FIELDS)

# Raw statements (gateway.store.raw) return the new id by RETURNING, not inserted_primary_key.
_INSERT_OBJECT = Prepared(insert(_OBJECTS).returning(_OBJECTS.c.id))
# Every header write goes through this one statement: the ``version = :b_version`` guard
# is what the ORM's version_id_col would add (StaleDataError when another writer won).
_UPDATE_OBJECT = Prepared(
    update(_OBJECTS)
    .where(_OBJECTS.c.id == bindparam("b_id"), _OBJECTS.c.version == bindparam("b_version"))
    .values({name: bindparam(f"v_{name}") for name in (*_OBJECT_FIELDS, "updated_at")})
    .values(version=bindparam("v_version"))
)
_TOUCH_OBJECT = Prepared(
    update(_OBJECTS)
    .where(_OBJECTS.c.id == bindparam("b_id"), _OBJECTS.c.version == bindparam("b_version"))
    .values(updated_at=bindparam("v_updated_at"), version=bindparam("v_version"))
)
# For an object not loaded in this session there is no read version to compare with.
_TOUCH_OBJECT_BY_ID = Prepared(
    update(_OBJECTS)
    .where(_OBJECTS.c.id == bindparam("b_id"))
    .values(updated_at=bindparam("v_updated_at"), version=_OBJECTS.c.version + 1)
)

_OBJECT_RECORD = select(_OBJECTS).where(
    _OBJECTS.c.owner == bindparam("owner"), _OBJECTS.c.uid == bindparam("uid")
)
_OBJECT_RECORD_LOCKED = _OBJECT_RECORD.with_for_update()
_OBJECT_RECORD_BY_ID = select(_OBJECTS).where(_OBJECTS.c.id == bindparam("object_id"))
# A load reads the object row and its instances in one statement (one round trip less
# per decision): one joined row per instance, or one row with NULL instance columns.
_OBJECT_COLUMNS: tuple[str, ...] = tuple(c.name for c in _OBJECTS.c)
_INSTANCE_COLUMNS: tuple[str, ...] = tuple(c.name for c in _INSTANCES_T.c)


def _with_instances(*where: ColumnElement[bool], lock: bool = False) -> Select[Any]:
    stmt = (
        select(_OBJECTS, *(c.label(f"i_{c.name}") for c in _INSTANCES_T.c))
        .select_from(_OBJECTS.outerjoin(_INSTANCES_T, _INSTANCES_T.c.object_id == _OBJECTS.c.id))
        .where(*where)
        .order_by(_INSTANCES_T.c.instance_key)
    )
    # Only the object row is locked, as by _OBJECT_RECORD_LOCKED (PostgreSQL refuses a
    # lock on the nullable side of an outer join anyway).
    return stmt.with_for_update(of=_OBJECTS) if lock else stmt


_BY_KEY = (_OBJECTS.c.owner == bindparam("owner"), _OBJECTS.c.uid == bindparam("uid"))
_OBJECT_WITH_INSTANCES = Prepared(_with_instances(*_BY_KEY))
_OBJECT_WITH_INSTANCES_LOCKED = Prepared(_with_instances(*_BY_KEY, lock=True))
_OBJECT_WITH_INSTANCES_BY_ID = Prepared(_with_instances(_OBJECTS.c.id == bindparam("object_id")))
# The ORM's version_id_col also guards a DELETE (StaleDataError when 0 rows matched).
_DELETE_OBJECT = delete(_OBJECTS).where(
    _OBJECTS.c.id == bindparam("b_id"), _OBJECTS.c.version == bindparam("b_version")
)

_INSTANCE_RECORDS = (
    select(_INSTANCES_T)
    .where(_INSTANCES_T.c.object_id == bindparam("object_id"))
    .order_by(_INSTANCES_T.c.instance_key)
)
_EXISTING_INSTANCES = select(
    *(_INSTANCES_T.c[name] for name in ("id", "instance_key", *_INSTANCE_FIELDS))
).where(
    _INSTANCES_T.c.object_id == bindparam("object_id"),
    _INSTANCES_T.c.instance_key.in_(bindparam("keys", expanding=True)),
)
_INSERT_INSTANCES = Prepared(insert(_INSTANCES_T))
_UPDATE_INSTANCE = Prepared(
    update(_INSTANCES_T)
    .where(_INSTANCES_T.c.id == bindparam("b_id"))
    .values({name: bindparam(f"v_{name}") for name in _INSTANCE_FIELDS})
)
_DELETE_INSTANCE_ATTENDEES = delete(_ATTENDEES_T).where(
    _ATTENDEES_T.c.object_id == bindparam("object_id"),
    _ATTENDEES_T.c.instance_key == bindparam("instance_key"),
)
_DELETE_INSTANCE = delete(_INSTANCES_T).where(
    _INSTANCES_T.c.object_id == bindparam("object_id"),
    _INSTANCES_T.c.instance_key == bindparam("instance_key"),
)

_ATTENDEE_COLUMNS = ("id", "instance_key", "address", *_ATTENDEE_FIELDS)


def _attendee_records_query(by_address: Literal["all", "one", "many"]) -> Select[Any]:
    stmt = select(_ATTENDEES_T).where(_ATTENDEES_T.c.object_id == bindparam("object_id"))
    if by_address == "one":
        # The REPLY case; an expanding IN is re-rendered on every execution.
        stmt = stmt.where(_ATTENDEES_T.c.address == bindparam("address"))
    elif by_address == "many":
        stmt = stmt.where(_ATTENDEES_T.c.address.in_(bindparam("addresses", expanding=True)))
    return stmt.order_by(_ATTENDEES_T.c.instance_key, _ATTENDEES_T.c.address)


_ATTENDEE_RECORDS = {flag: _attendee_records_query(flag) for flag in ("all", "one", "many")}
# The two without an expanding IN run on the raw path (gateway.store.raw).
_ATTENDEE_RECORDS_RAW = {flag: Prepared(_ATTENDEE_RECORDS[flag]) for flag in ("all", "one")}
# Existing rows of the (instance_key, address) pairs a batch writes: the superset
# "these instances x these addresses" through the unique index, filtered in Python
# (portable; tuple IN with expanding parameters is not).
_EXISTING_ATTENDEES = select(*(_ATTENDEES_T.c[name] for name in _ATTENDEE_COLUMNS)).where(
    _ATTENDEES_T.c.object_id == bindparam("object_id"),
    _ATTENDEES_T.c.instance_key.in_(bindparam("keys", expanding=True)),
    _ATTENDEES_T.c.address.in_(bindparam("addresses", expanding=True)),
)
# Above this many addresses, read the instances' rows whole instead of binding thousands
# of parameters (SQLite's limit is 32766; PostgreSQL's 65535).
_MAX_BOUND_ADDRESSES = 500
_EXISTING_ATTENDEES_OF_INSTANCES = select(
    *(_ATTENDEES_T.c[name] for name in _ATTENDEE_COLUMNS)
).where(
    _ATTENDEES_T.c.object_id == bindparam("object_id"),
    _ATTENDEES_T.c.instance_key.in_(bindparam("keys", expanding=True)),
)
_INSERT_ATTENDEES = Prepared(insert(_ATTENDEES_T))
_UPDATE_ATTENDEE = Prepared(
    update(_ATTENDEES_T)
    .where(_ATTENDEES_T.c.id == bindparam("b_id"))
    .values({name: bindparam(f"v_{name}") for name in (*_ATTENDEE_FIELDS, "updated_at")})
)
# Single-row UPDATEs of just the changed columns, built once per column set (a REPLY
# changes the same few columns every time); bounded against unusual combinations.
_ATTENDEE_UPDATES: dict[tuple[str, ...], Prepared] = {}
_MAX_ATTENDEE_UPDATES = 64


def _attendee_update(columns: tuple[str, ...]) -> Prepared:
    stmt = _ATTENDEE_UPDATES.get(columns)
    if stmt is None:
        names = (*columns, "updated_at")
        stmt = Prepared(
            update(_ATTENDEES_T)
            .where(_ATTENDEES_T.c.id == bindparam("b_id"))
            .values({name: bindparam(f"v_{name}") for name in names})
        )
        if len(_ATTENDEE_UPDATES) < _MAX_ATTENDEE_UPDATES:
            _ATTENDEE_UPDATES[columns] = stmt
    return stmt


_DELETE_ATTENDEE = delete(_ATTENDEES_T).where(
    _ATTENDEES_T.c.object_id == bindparam("object_id"),
    _ATTENDEES_T.c.instance_key == bindparam("instance_key"),
    _ATTENDEES_T.c.address == bindparam("address"),
)


def _execute_rows(s: Session, stmt: Prepared, rows: list[dict[str, object]]) -> None:
    """Run ``stmt`` for ``rows``: executemany, or a plain execute for one row (cheaper)."""
    stmt.execute_many(s, rows)


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


# --- what a locked load already read, for the apply that follows it ----------------
#
# A decision is "load (locked) -> engine -> apply" in one transaction.  The apply needs
# to know whether the object exists, its current header values and ``version``, and
# which attendee rows exist: facts the load just read under the (owner, UID) lock, so
# nobody else can have changed them.  The load leaves them in ``Session.info``; a write
# uses them only in the same transaction and savepoint.  The absent-object and attendee
# facts are one-shot (the next write consumes them, every other attendee writer drops
# them); the header snapshot is kept current by every header write here (and dropped
# when the ORM writes the row), so the version check stays exact.  Saves a SELECT and
# the ORM's instance state per decision (the REPLY path is ~6 statements).

_ABSENT_OBJECT = "gateway.store.objects.absent_object"
_ATTENDEE_SNAPSHOT = "gateway.store.objects.attendee_snapshot"
_HEADER_SNAPSHOT = "gateway.store.objects.header_snapshot"


def _tx_marker(s: Session) -> tuple[object, object]:
    return (s.get_transaction(), s.get_nested_transaction())


def _remember(s: Session, slot: str, key: object, value: object) -> None:
    s.info[slot] = (_tx_marker(s), key, value)


def _recall(s: Session, slot: str, key: object) -> object | None:
    """The value remembered under ``slot`` for ``key`` in this transaction, once."""
    snapshot = s.info.pop(slot, None)
    if snapshot is None:
        return None
    (tx, nested), remembered_key, value = snapshot
    current_tx, current_nested = _tx_marker(s)
    if tx is not current_tx or nested is not current_nested or remembered_key != key:
        return None
    return cast(object, value)


def _drop_attendee_snapshot(s: Session) -> None:
    s.info.pop(_ATTENDEE_SNAPSHOT, None)


def _remember_header(s: Session, values: dict[str, Any]) -> None:
    """Keep the object row as read or written in this transaction (one object at a time)."""
    s.info[_HEADER_SNAPSHOT] = (_tx_marker(s), values["id"], values)


def _header_snapshot(s: Session, object_id: int) -> dict[str, Any] | None:
    """The remembered row of ``object_id`` if it was read or written in this savepoint."""
    snapshot = s.info.get(_HEADER_SNAPSHOT)
    if snapshot is None:
        return None
    (tx, nested), remembered_id, values = snapshot
    if remembered_id != object_id:
        return None
    current_tx, current_nested = _tx_marker(s)
    if tx is not current_tx or nested is not current_nested:
        return None
    return cast("dict[str, Any]", values)


def _drop_header_snapshot(s: Session) -> None:
    s.info.pop(_HEADER_SNAPSHOT, None)


def _dialect(s: Session) -> str:
    return s.get_bind().dialect.name


def _lock(s: Session, owner_key: str, uid: str) -> bool:
    """Take the (owner, UID) advisory lock on PostgreSQL; True if the row must be locked."""
    if _dialect(s) != "postgresql":
        return False
    _ADVISORY_LOCK.rows(s, {"key": lock_key(owner_key, uid)})
    return True


def object_record(s: Session, owner: str, uid: str, *, lock: bool = False) -> Row[Any] | None:
    """Like :func:`get_object` but a plain Core row (no ORM instance, no identity map).

    Same locking as :func:`get_object`.  What it read becomes the header snapshot for
    :func:`put_object` and :func:`touch_object` later in this transaction.
    """
    params = {"owner": normalise(owner), "uid": uid}
    if lock and _lock(s, params["owner"], uid):
        row = s.execute(_OBJECT_RECORD_LOCKED, params).first()
    else:
        row = s.execute(_OBJECT_RECORD, params).first()
    if row is None:
        if lock:
            # Under the lock (or SQLite's single writer) it stays absent in this transaction.
            _remember(s, _ABSENT_OBJECT, (params["owner"], uid), True)
        return None
    _remember_header(s, dict(row._mapping))
    return row


def object_record_by_id(s: Session, object_id: int) -> Row[Any] | None:
    """The object with this primary key as a Core row (see :func:`object_record`)."""
    row = s.execute(_OBJECT_RECORD_BY_ID, {"object_id": object_id}).first()
    if row is not None:
        _remember_header(s, dict(row._mapping))
    return row


def _split_joined(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    first = rows[0]
    header = {name: first[name] for name in _OBJECT_COLUMNS}
    instances = [
        {name: m[f"i_{name}"] for name in _INSTANCE_COLUMNS} for m in rows if m["i_id"] is not None
    ]
    return header, instances


def object_with_instances(
    s: Session, owner: str, uid: str, *, lock: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The object row and its instance rows (by key), as column-name mappings.

    :func:`object_record` and :func:`instance_records` in one statement, with the same
    locking and the same header snapshot as :func:`object_record`.
    """
    params = {"owner": normalise(owner), "uid": uid}
    if lock and _lock(s, params["owner"], uid):
        # The advisory lock is taken in its own statement first, so this SELECT's
        # snapshot is taken after any wait for it (READ COMMITTED): it sees what the
        # previous holder committed.  Every writer of an object holds that lock, so the
        # row lock never waits and the joined instance rows are as current as the row.
        rows = _OBJECT_WITH_INSTANCES_LOCKED.mappings(s, params)
    else:
        rows = _OBJECT_WITH_INSTANCES.mappings(s, params)
    if not rows:
        if lock:
            _remember(s, _ABSENT_OBJECT, (params["owner"], uid), True)
        return None
    header, instances = _split_joined(rows)
    _remember_header(s, dict(header))
    return header, instances


def object_with_instances_by_id(
    s: Session, object_id: int
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """Like :func:`object_with_instances`, by primary key (no lock)."""
    rows = _OBJECT_WITH_INSTANCES_BY_ID.mappings(s, {"object_id": object_id})
    if not rows:
        return None
    header, instances = _split_joined(rows)
    _remember_header(s, dict(header))
    return header, instances


def get_object(s: Session, owner: str, uid: str, *, lock: bool = False) -> ObjectRow | None:
    """The owner's object with this UID as an ORM row, or ``None``.

    ``lock=True`` serialises the rest of the transaction against every other transaction
    working on the same (owner, UID), on any replica (PostgreSQL); see the module docstring.
    The hot path uses :func:`object_record` (same locking, no ORM state) instead.
    """
    params = {"owner": normalise(owner), "uid": uid}
    if lock and _lock(s, params["owner"], uid):
        row = s.scalars(_OBJECT_BY_KEY_LOCKED, params).first()
    else:
        row = s.scalars(_OBJECT_BY_KEY, params).first()
    if lock and row is None:
        _remember(s, _ABSENT_OBJECT, (params["owner"], uid), True)
    return row


def get_object_by_id(s: Session, object_id: int) -> ObjectRow | None:
    """The object with this primary key, or ``None``."""
    return s.get(ObjectRow, object_id)


def _loaded_object(s: Session, object_id: int) -> ObjectRow | None:
    """The ORM row of ``object_id`` if this session holds it already (no SQL)."""
    if not s.identity_map:
        return None
    # The identity key spelled out: ``identity_key()`` costs more than the lookup.
    obj = s.identity_map.get((ObjectRow, (object_id,), None))
    return obj if isinstance(obj, ObjectRow) else None


def _forget(s: Session, kind: type[InstanceRow | AttendeeRow], object_id: int) -> None:
    """Expire ORM copies of rows that a Core statement just changed or deleted.

    The hot path never loads these as ORM objects, so this is usually a scan of a short
    identity map; it keeps callers that did (e.g. :func:`get_attendee_rows`) correct.
    """
    for obj in list(s.identity_map.values()):
        if isinstance(obj, kind) and obj.object_id == object_id:
            s.expunge(obj)


def _write_header(s: Session, row: ObjectRow, values: Mapping[str, object], now: datetime) -> bool:
    """Write changed header fields of a loaded ORM object in one UPDATE; True if written.

    Same outcome as an ORM flush of the row (``updated_at`` = now, ``version`` + 1,
    StaleDataError when the stored version moved), then the new values become the
    row's committed state so the session's copy stays current.
    """
    _drop_header_snapshot(s)  # the ORM copy is the current state from here on
    if not any(getattr(row, name) != value for name, value in values.items()):
        return False
    if s.is_modified(row):
        # Pending ORM changes of this row: let the ORM write everything in one flush.
        for name, value in values.items():
            setattr(row, name, value)
        row.updated_at = now
        s.flush()
        return True
    current = {name: getattr(row, name) for name in _OBJECT_FIELDS}
    current.update(values)
    _update_header(s, row.id, row.version, current, now)
    for name, value in current.items():
        set_committed_value(row, name, value)
    return True


def _update_header(
    s: Session, object_id: int, old_version: int, fields: dict[str, object], now: datetime
) -> None:
    """The version-checked header UPDATE; completes ``fields`` with updated_at/version."""
    fields["updated_at"] = now
    fields["version"] = old_version + 1
    params: dict[str, object] = {f"v_{name}": value for name, value in fields.items()}
    params["b_id"] = object_id
    params["b_version"] = old_version
    if _UPDATE_OBJECT.execute(s, params) != 1:
        _drop_header_snapshot(s)
        raise StaleDataError(f"object {object_id} changed since version {old_version} was read")


def _write_snapshot(
    s: Session, current: dict[str, Any], values: Mapping[str, object], now: datetime
) -> bool:
    """Like :func:`_write_header` for an object known only by its header snapshot."""
    if all(current[name] == value for name, value in values.items()):
        return False
    fields = {name: current[name] for name in _OBJECT_FIELDS}
    fields.update(values)
    _update_header(s, current["id"], current["version"], fields, now)
    _remember_header(s, {**current, **fields})
    return True


def put_object(
    s: Session,
    owner: str,
    uid: str,
    *,
    now: datetime,
    object_id: int | None = None,
    **fields: Unpack[ObjectFields],
) -> tuple[int, ObjectWrite]:
    """Create the (owner, UID) object or update the given fields without an ORM flush.

    Returns the row id and what was written (an UPDATE only when a value changed).
    ``object_id`` (when the caller knows it) finds the row without a query when this
    transaction read it already (:func:`object_record`) or the session holds it.
    Creating requires ``component`` and ``role`` and starts ``version`` at 1, as the
    ORM would.
    """
    values: dict[str, object] = dict(fields)
    _normalise_fields(values)
    owner_key = normalise(owner)
    known_absent = _recall(s, _ABSENT_OBJECT, (owner_key, uid)) is True
    current: dict[str, Any] | None = None
    if object_id is not None:
        row = _loaded_object(s, object_id)
        if row is not None:
            return object_id, "updated" if _write_header(s, row, values, now) else "unchanged"
        current = _header_snapshot(s, object_id)
        if current is None and object_record_by_id(s, object_id) is not None:
            current = _header_snapshot(s, object_id)
    if current is None and not (known_absent and object_id is None):
        found = object_record(s, owner_key, uid)
        if found is not None:
            current = _header_snapshot(s, found.id)
    if current is not None:
        row = _loaded_object(s, current["id"])
        if row is not None:  # an ORM copy is in the session: keep it current
            written = _write_header(s, row, values, now)
        else:
            written = _write_snapshot(s, current, values, now)
        return current["id"], "updated" if written else "unchanged"
    missing = [name for name in ("component", "role") if name not in values]
    if missing:
        raise ValueError(f"creating object {uid!r} needs {', '.join(missing)}")
    check_key("UID", uid)
    new = dict(_OBJECT_DEFAULTS)
    new.update(values)
    new.update(owner=owner_key, uid=uid, created_at=now, updated_at=now, version=1)
    new_id = int(_INSERT_OBJECT.scalar(s, new))
    new["id"] = new_id
    _remember_header(s, new)
    return new_id, "created"


def upsert_object(
    s: Session, owner: str, uid: str, *, now: datetime, **fields: Unpack[ObjectFields]
) -> ObjectRow:
    """Create the (owner, UID) object or update the given fields; returns the row.

    Creating requires ``component`` and ``role``; a UID longer than
    :data:`~gateway.store.limits.MAX_KEY_BYTES` raises
    :class:`~gateway.store.limits.FieldTooLongError`.  ``version`` starts at 1 and is
    bumped on every UPDATE that changes something.
    """
    object_id, _what = put_object(s, owner, uid, now=now, **fields)
    row = s.get(ObjectRow, object_id)
    if row is None:  # pragma: no cover - just written in this transaction
        raise LookupError(f"object {object_id} vanished")
    return row


def touch_object(s: Session, row: ObjectRow | int, now: datetime) -> None:
    """Mark an object changed (bumps ``version``) after instance or attendee changes.

    Instance and attendee rows live in their own tables; touching the object makes the
    optimistic-concurrency check and ``updated_at`` cover them too.  ``row`` may be the
    row id: the version this transaction read (the header snapshot, or a row the
    session loaded) is then checked without a query, and an object nothing was read of
    is bumped unconditionally (nothing was read, so nothing can be stale).
    """
    obj = _loaded_object(s, row) if isinstance(row, int) else row
    if obj is None:
        object_id = cast(int, row)
        current = _header_snapshot(s, object_id)
        if current is None:
            _drop_header_snapshot(s)
            _TOUCH_OBJECT_BY_ID.execute(s, {"b_id": object_id, "v_updated_at": now})
            return
        _bump(s, object_id, current["version"], now)
        _remember_header(s, {**current, "updated_at": now, "version": current["version"] + 1})
        return
    _drop_header_snapshot(s)
    if s.is_modified(obj):
        obj.updated_at = now
        # Force the UPDATE (and so the version bump) even when ``now`` equals updated_at.
        flag_modified(obj, "updated_at")
        s.flush()
        return
    old_version = obj.version
    _bump(s, obj.id, old_version, now)
    set_committed_value(obj, "updated_at", now)
    set_committed_value(obj, "version", old_version + 1)


def _bump(s: Session, object_id: int, old_version: int, now: datetime) -> None:
    params = {
        "b_id": object_id,
        "b_version": old_version,
        "v_updated_at": now,
        "v_version": old_version + 1,
    }
    if _TOUCH_OBJECT.execute(s, params) != 1:
        _drop_header_snapshot(s)
        raise StaleDataError(f"object {object_id} changed since version {old_version} was read")


def get_instance(s: Session, object_id: int, instance_key: str) -> InstanceRow | None:
    """One instance (``""`` = master) of an object, or ``None``."""
    params = {"object_id": object_id, "instance_key": instance_key}
    return s.scalars(_INSTANCE_BY_KEY, params).first()


def instance_rows(s: Session, object_id: int) -> list[InstanceRow]:
    """Every instance of an object, master (``""``) first, then by key."""
    return list(s.scalars(_INSTANCES, {"object_id": object_id}))


def instance_records(s: Session, object_id: int) -> Sequence[Row[Any]]:
    """Like :func:`instance_rows` but plain Core rows (attribute access by column name)."""
    return s.execute(_INSTANCE_RECORDS, {"object_id": object_id}).all()


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


def put_instances(
    s: Session,
    object_id: int,
    items: Iterable[tuple[str, InstanceFields]],
    *,
    new_object: bool = False,
) -> int:
    """Create or update many instances: one SELECT, one INSERT, one UPDATE at most.

    ``items`` are (instance_key, fields) in change order; several for one key merge as
    consecutive :func:`upsert_instance` calls would (later values win).  ``new_object``
    (the object was created in this transaction) skips the SELECT.  Unchanged rows are
    not written.  Returns the number of rows inserted or updated.
    """
    wanted: dict[str, dict[str, object]] = {}
    for key, fields in items:
        wanted.setdefault(key, {}).update(fields)
    if not wanted:
        return 0
    existing: dict[str, Row[Any]] = {}
    if not new_object:
        params = {"object_id": object_id, "keys": sorted(wanted)}
        existing = {r.instance_key: r for r in s.execute(_EXISTING_INSTANCES, params)}
    inserts: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    for key, values in wanted.items():
        old = existing.get(key)
        if old is None:
            check_key("instance key", key)
            new = dict(_INSTANCE_DEFAULTS)
            new.update(values)
            new.update(object_id=object_id, instance_key=key)
            inserts.append(new)
            continue
        current = old._mapping
        if all(current[name] == value for name, value in values.items()):
            continue
        merged: dict[str, object] = {f"v_{name}": current[name] for name in _INSTANCE_FIELDS}
        merged.update({f"v_{name}": value for name, value in values.items()})
        merged["b_id"] = old.id
        updates.append(merged)
    if inserts:
        _execute_rows(s, _INSERT_INSTANCES, inserts)
    if updates:
        _execute_rows(s, _UPDATE_INSTANCE, updates)
    if updates:
        _forget(s, InstanceRow, object_id)
    return len(inserts) + len(updates)


def delete_instance(s: Session, object_id: int, instance_key: str) -> int:
    """Delete one instance and its attendee rows; returns the number of instances deleted."""
    _drop_attendee_snapshot(s)
    params = {"object_id": object_id, "instance_key": instance_key}
    s.execute(_DELETE_INSTANCE_ATTENDEES, params)
    result = s.execute(_DELETE_INSTANCE, params)
    _forget(s, InstanceRow, object_id)
    _forget(s, AttendeeRow, object_id)
    return int(getattr(result, "rowcount", 0) or 0)


def delete_object(s: Session, object_id: int) -> bool:
    """Delete an object; instances, attendees and busy periods go with it (ON DELETE CASCADE)."""
    _drop_attendee_snapshot(s)
    row = _loaded_object(s, object_id)
    if row is not None:
        _drop_header_snapshot(s)
        s.delete(row)
        s.flush()
    else:
        current = _header_snapshot(s, object_id)
        if current is None and object_record_by_id(s, object_id) is not None:
            current = _header_snapshot(s, object_id)
        _drop_header_snapshot(s)
        if current is None:
            return False
        # What the ORM's DELETE of a versioned row does: match the version read.
        params = {"b_id": object_id, "b_version": current["version"]}
        if s.execute(_DELETE_OBJECT, params).rowcount != 1:  # type: ignore[attr-defined]
            raise StaleDataError(f"object {object_id} changed since it was read")
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
    _drop_attendee_snapshot(s)  # the caller may change these ORM rows behind our back
    return list(s.scalars(stmt, params))


def attendee_records(
    s: Session,
    object_id: int,
    addresses: Iterable[str] | None = None,
    *,
    remember: bool = False,
) -> list[dict[str, Any]]:
    """Like :func:`get_attendee_rows` (all instances) but dicts by column name, no ORM state.

    ``remember=True`` (only after :func:`object_record` with ``lock=True``) keeps the rows
    for the :func:`put_attendees` of the same transaction, which then needs no SELECT.
    """
    params: dict[str, object] = {"object_id": object_id}
    covered: frozenset[str] | None = None
    if addresses is not None:
        covered = frozenset(normalise(addr) for addr in addresses)
        if not covered:
            return []
        params["addresses"] = sorted(covered)
    rows: list[dict[str, Any]]
    if covered is None:
        rows = _ATTENDEE_RECORDS_RAW["all"].mappings(s, params)
    elif len(covered) == 1:
        params = {"object_id": object_id, "address": next(iter(covered))}
        rows = _ATTENDEE_RECORDS_RAW["one"].mappings(s, params)
    else:
        rows = [dict(r._mapping) for r in s.execute(_ATTENDEE_RECORDS["many"], params)]
    if remember:
        by_key = {(r["instance_key"], r["address"]): r for r in rows}
        _remember(s, _ATTENDEE_SNAPSHOT, object_id, (covered, by_key))
    else:
        _drop_attendee_snapshot(s)
    return rows


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
    _drop_attendee_snapshot(s)
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


def put_attendees(
    s: Session,
    object_id: int,
    items: Iterable[tuple[str, str, AttendeeFields]],
    *,
    now: datetime,
    new_object: bool = False,
) -> int:
    """Create or update many attendee rows: one SELECT, one INSERT, one UPDATE at most.

    ``items`` are (instance_key, address, fields) in change order; several for one row
    merge as consecutive :func:`upsert_attendee` calls would (later values win).  The
    existing rows of the affected (instance_key, address) pairs are read with one query
    (none when ``new_object``: the object was created in this transaction); rows whose
    values would not change are not written (their ``updated_at`` stays).  New rows get
    the same defaults as :func:`upsert_attendee`.  Returns rows inserted or updated.
    """
    wanted: dict[tuple[str, str], dict[str, object]] = {}
    for instance_key, address, fields in items:
        values: dict[str, object] = dict(fields)
        _normalise_fields(values)
        wanted.setdefault((instance_key, normalise(address)), {}).update(values)
    if not wanted:
        return 0
    existing: dict[tuple[str, str], Mapping[str, Any]] = {}
    must_read = not new_object
    snapshot = _recall(s, _ATTENDEE_SNAPSHOT, object_id)
    if snapshot is not None and must_read:
        covered, by_key = cast(
            "tuple[frozenset[str] | None, dict[tuple[str, str], dict[str, Any]]]", snapshot
        )
        if covered is None or all(address in covered for _, address in wanted):
            # Every row that exists for these addresses was read by the locked load.
            existing = {k: by_key[k] for k in wanted if k in by_key}
            must_read = False
    if must_read:
        keys = sorted({k for k, _ in wanted})
        addresses = sorted({a for _, a in wanted})
        params: dict[str, object] = {"object_id": object_id, "keys": keys}
        if len(addresses) <= _MAX_BOUND_ADDRESSES:
            params["addresses"] = addresses
            stmt = _EXISTING_ATTENDEES
        else:
            stmt = _EXISTING_ATTENDEES_OF_INSTANCES
        for r in s.execute(stmt, params):
            if (r.instance_key, r.address) in wanted:
                existing[(r.instance_key, r.address)] = dict(r._mapping)
    inserts: list[dict[str, object]] = []
    changed: list[tuple[Mapping[str, Any], dict[str, object]]] = []
    for (instance_key, address), values in wanted.items():
        old = existing.get((instance_key, address))
        if old is None:
            check_key("attendee address", address)
            check_key("instance key", instance_key)
            new = dict(_ATTENDEE_DEFAULTS)
            new.update(values)
            new.update(
                object_id=object_id, instance_key=instance_key, address=address, updated_at=now
            )
            inserts.append(new)
            continue
        if all(old[name] == value for name, value in values.items()):
            continue
        changed.append((old, values))
    if inserts:
        _execute_rows(s, _INSERT_ATTENDEES, inserts)
    if len(changed) == 1:
        # One row (a REPLY): write only what changed, as an ORM flush would.
        old, values = changed[0]
        columns = tuple(
            name for name in _ATTENDEE_FIELDS if name in values and old[name] != values[name]
        )
        one: dict[str, object] = {f"v_{name}": values[name] for name in columns}
        one["v_updated_at"] = now
        one["b_id"] = old["id"]
        _attendee_update(columns).execute(s, one)
    elif changed:
        # Many rows: one executemany of the full column set.
        updates: list[dict[str, object]] = []
        for old, values in changed:
            merged = {f"v_{name}": old[name] for name in _ATTENDEE_FIELDS}
            merged.update({f"v_{name}": value for name, value in values.items()})
            merged["v_updated_at"] = now
            merged["b_id"] = old["id"]
            updates.append(merged)
        _UPDATE_ATTENDEE.execute_many(s, updates)
    if changed:
        _forget(s, AttendeeRow, object_id)
    return len(inserts) + len(changed)


def delete_attendee(s: Session, object_id: int, instance_key: str, address: str) -> bool:
    """Remove one attendee row (e.g. the organiser removed that attendee)."""
    _drop_attendee_snapshot(s)
    params = {"object_id": object_id, "instance_key": instance_key, "address": normalise(address)}
    result = s.execute(_DELETE_ATTENDEE, params)
    _forget(s, AttendeeRow, object_id)
    return bool(getattr(result, "rowcount", 0))


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
