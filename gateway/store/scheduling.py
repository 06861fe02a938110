"""The bridge between the iTIP engine's values and the calendar tables.

:func:`load` builds a :class:`~gateway.domain.model.StoredObject` from rows, reading
only the attendee rows a decision needs; :func:`apply` writes a
:class:`~gateway.domain.model.Decision`'s changes back.  Both run inside the caller's
transaction so the object, its instances, attendees, busy time, held items, outbox rows
and the journal outcome commit together (ARCHITECTURE.md section 3).

Speed (issue 5): :func:`apply` writes attendee and instance rows in batches (see its
docstring for why the change order is kept) with prebuilt Core statements, never an ORM
flush.  :func:`load` reads the object and its instances in one joined SELECT and the
attendees in a second, as plain rows (no ORM instances), and keeps small bounded caches
of parsed instance components, VTIMEZONEs and property lines, because the same event is
loaded again for every REPLY and parsing its text was most of the load's CPU.  A REPLY
is four statements here: those two reads, one attendee UPDATE and the version bump.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from threading import Lock
from typing import Any, Generic, Protocol, Self, TypeVar, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from gateway.domain.ical import Component, ICalError, Property, parse, parse_property, serialize
from gateway.domain.model import (
    AttendeeState,
    BusyPeriod,
    Change,
    DeleteAttendee,
    DeleteInstance,
    DeleteObject,
    HeldItem,
    HoldRequest,
    ObjectHeader,
    PutAttendee,
    PutInstance,
    PutObject,
    ReplaceBusy,
    ResolveHeld,
    Role,
    StoredInstance,
    StoredObject,
)
from gateway.store import busy, held, objects
from gateway.store.models import ObjectRow, OutboxRow

__all__ = [
    "apply",
    "busy_between",
    "hold",
    "load",
    "load_by_id",
    "outbox_by_message_id",
]


# --- text <-> values ----------------------------------------------------------------


def _props_text(props: Iterable[Property]) -> str:
    return "\r\n".join(p.to_line() for p in props)


def _props_from(text: str) -> list[Property]:
    out: list[Property] = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(parse_property(line))
            except ICalError:
                continue  # a line we could store we can always read; defensive only
    return out


def _components_from(text: str) -> list[Component]:
    if not text.strip():
        return []
    try:
        return parse(text)
    except ICalError:
        return []


def _property_from(line: str) -> list[Property]:
    try:
        return [parse_property(line)] if line else []
    except ICalError:
        return []  # a line we could store we can always read; defensive only


class _Copyable(Protocol):
    def copy(self) -> Self: ...


_T = TypeVar("_T", bound=_Copyable)


class _ParseCache(Generic[_T]):
    """A bounded LRU of parsed iCalendar text, keyed by the text itself.

    Keying on the exact text (not a row id or a digest) makes a hit always correct: a
    row rewritten with new text simply misses, and two owners' copies of one event
    share an entry.  Components and properties are mutable and the engine may build on
    them, so every hit hands out a deep copy (``copy`` is several times cheaper than
    parsing).  Bounded by entries and by total text size so a run of huge invitations
    cannot grow the daemon (issue 5: RSS <= 150 MB, growth < 10%); the parsed objects
    take a few times the text's size, so 2 M characters of text stay under ~20 MB.
    The lock makes it safe for the store's worker threads.
    """

    def __init__(
        self,
        parse_text: Callable[[str], Sequence[_T]],
        max_entries: int = 256,
        max_chars: int = 2_000_000,
    ) -> None:
        self._parse = parse_text
        self._entries: OrderedDict[str, tuple[_T, ...]] = OrderedDict()
        self._chars = 0
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._lock = Lock()

    def parsed(self, text: str) -> list[_T]:
        """What ``text`` parses to (``[]`` if empty or unparsable), freshly copied."""
        with self._lock:
            cached = self._entries.get(text)
            if cached is not None:
                self._entries.move_to_end(text)
        if cached is None:
            cached = tuple(self._parse(text))
            if len(text) <= self._max_chars // 8:  # one huge event must not evict all
                with self._lock:
                    if text not in self._entries:
                        self._entries[text] = cached
                        self._chars += len(text)
                        while (
                            len(self._entries) > self._max_entries or self._chars > self._max_chars
                        ):
                            old, _ = self._entries.popitem(last=False)
                            self._chars -= len(old)
        return [item.copy() for item in cached]


#: Instance components and VTIMEZONEs.
_PARSED: _ParseCache[Component] = _ParseCache(_components_from)
#: Attendee lines and VCALENDAR-level lines: the same event's are read again on every
#: REPLY, and parsing a line costs several times copying it.
_LINES: _ParseCache[Property] = _ParseCache(_property_from, 4096, 1_000_000)
_CALENDAR_PROPS: _ParseCache[Property] = _ParseCache(_props_from, 256, 500_000)

# Built once (issue 5): building a statement per call costs more CPU than running it.
_OBJECTS = cast(Table, ObjectRow.__table__)
_UIDS_OF = select(_OBJECTS.c.id, _OBJECTS.c.uid).where(
    _OBJECTS.c.id.in_(bindparam("ids", expanding=True))
)
_OUTBOX_BY_MESSAGE_ID = (
    select(OutboxRow).where(OutboxRow.message_id == bindparam("message_id")).limit(1)
)


def _split_list(value: str | None) -> tuple[str, ...]:
    return tuple(value.split()) if value else ()  # split() never yields empty parts


def _header(row: Mapping[str, Any]) -> ObjectHeader:
    """The header from the object row's columns (see :func:`objects.object_with_instances`)."""
    return ObjectHeader(
        owner=row["owner"],
        uid=row["uid"],
        component_type=row["component"],
        role=Role(row["role"]),
        organizer=row["organizer"] or "",
        organizer_sent_by=row["organizer_sent_by"] or "",
        sequence=row["sequence"],
        dtstamp=row["dtstamp"],
        status=row["status"] or "",
        summary=row["summary"] or "",
        is_recurring=row["is_recurring"],
        calendar_props=_CALENDAR_PROPS.parsed(row["calendar_props"]),
        timezones=_PARSED.parsed(row["timezones"]),
    )


def _instance(row: Mapping[str, Any]) -> StoredInstance:
    """An instance from the columns of an ``instances`` row; its component text is
    parsed only if the engine reads it (:meth:`StoredInstance.deferred`)."""
    text = row["component_text"]

    def load() -> Component:
        comps = _PARSED.parsed(text)
        return comps[0] if comps else Component("VEVENT")

    return StoredInstance.deferred(
        load,
        key=row["instance_key"],
        sequence=row["sequence"],
        dtstamp=row["dtstamp"],
        this_and_future=row["this_and_future"],
        cancelled=row["cancelled"],
        start=row["start_utc"],
        end=row["end_utc"],
        status=row["status"] or "",
        transp=row["transp"] or "",
    )


def _attendee(row: Mapping[str, Any]) -> AttendeeState:
    """An attendee from a row of ``attendees`` (see :func:`objects.attendee_records`)."""
    parsed = _LINES.parsed(row["property_text"])
    prop = parsed[0] if parsed else Property("ATTENDEE", "mailto:" + row["address"])
    return AttendeeState(
        instance_key=row["instance_key"],
        address=row["address"],
        prop=prop,
        partstat=row["partstat"],
        role=row["role"],
        rsvp=row["rsvp"],
        cutype=row["cutype"],
        delegated_to=_split_list(row["delegated_to"]),
        delegated_from=_split_list(row["delegated_from"]),
        sent_by=row["sent_by"] or "",
        member=_split_list(row["member"]),
        request_status=row["request_status"] or "",
        schedule_status=row["schedule_status"] or "",
        reply_sequence=row["reply_sequence"],
        reply_dtstamp=row["reply_dtstamp"],
        replied_at=row["replied_at"],
    )


def _held(row: Mapping[str, Any]) -> HeldItem:
    return HeldItem(
        id=row["id"],
        kind=row["kind"],
        sender=row["sender"],
        method=row["method"],
        payload=row["payload"],
        instance_key=row["instance_key"],
        sequence=row["sequence"] or 0,
        dtstamp=row["dtstamp"],
    )


# --- loading ------------------------------------------------------------------------


def _build(
    s: Session,
    row: Mapping[str, Any],
    instances: Iterable[Mapping[str, Any]],
    addresses: frozenset[str] | None,
    with_held: bool,
    *,
    remember: bool = False,
) -> StoredObject:
    stored = StoredObject(header=_header(row))
    for inst in instances:
        stored.instances[inst["instance_key"]] = _instance(inst)
    rows = objects.attendee_records(s, row["id"], addresses, remember=remember)
    for att in rows:
        stored.attendees[(att["instance_key"], att["address"])] = _attendee(att)
    stored.attendees_complete = addresses is None
    if with_held:
        stored.held = [_held(h) for h in held.pending_records(s, row["owner"], row["uid"])]
    return stored


def load(
    s: Session,
    owner: str,
    uid: str,
    *,
    addresses: frozenset[str] | None = None,
    with_held: bool = False,
    lock: bool = True,
) -> tuple[StoredObject | None, int | None]:
    """Load the owner's copy of ``uid`` (None when unknown) and its row id.

    ``addresses`` limits the attendee rows read (a REPLY needs only the replier's);
    ``lock`` takes a row lock on PostgreSQL so two replicas never interleave decisions
    on one event (ARCHITECTURE.md section 3).
    """
    found = objects.object_with_instances(s, owner, uid, lock=lock)
    if found is None:
        return None, None
    row, instances = found
    # Under the lock the attendee rows read here are still current when apply() writes,
    # so apply() may reuse them instead of reading them again (objects.put_attendees).
    return _build(s, row, instances, addresses, with_held, remember=lock), row["id"]


def load_by_id(s: Session, object_id: int) -> StoredObject | None:
    """Load a whole object (all attendees and held items) by row id."""
    found = objects.object_with_instances_by_id(s, object_id)
    return None if found is None else _build(s, found[0], found[1], None, True)


def held_items(s: Session, owner: str, uid: str) -> list[HeldItem]:
    """Unresolved held items of (owner, uid), oldest first."""
    return [_held(h) for h in held.pending_records(s, owner, uid)]


def busy_between(
    s: Session, owner: str, start: datetime, end: datetime, exclude_object_id: int | None = None
) -> tuple[BusyPeriod, ...]:
    """The owner's busy periods overlapping [start, end)."""
    rows = busy.overlapping(s, owner, start, end, exclude_object_id=exclude_object_id)
    if not rows:
        return ()
    wanted = sorted({r.object_id for r in rows})
    uids: dict[int, str] = {r.id: r.uid for r in s.execute(_UIDS_OF, {"ids": wanted})}
    return tuple(
        BusyPeriod(r.start_utc, r.end_utc, r.fbtype, uids.get(r.object_id, "")) for r in rows
    )


# --- writing ------------------------------------------------------------------------


def _instance_fields(inst: StoredInstance) -> objects.InstanceFields:
    rid = inst.component.get("RECURRENCE-ID")
    return {
        "recurrence_id_text": rid.to_line() if rid is not None else None,
        "this_and_future": inst.this_and_future,
        "sequence": inst.sequence,
        "dtstamp": inst.dtstamp,
        "start_utc": inst.start,
        "end_utc": inst.end,
        "status": inst.status or None,
        "transp": inst.transp or None,
        "cancelled": inst.cancelled,
        "component_text": serialize(inst.component),
    }


def _attendee_fields(att: AttendeeState) -> objects.AttendeeFields:
    return {
        "partstat": att.partstat,
        "role": att.role,
        "rsvp": att.rsvp,
        "cutype": att.cutype,
        "delegated_to": " ".join(att.delegated_to),
        "delegated_from": " ".join(att.delegated_from),
        "sent_by": att.sent_by or None,
        "member": " ".join(att.member) or None,
        "request_status": att.request_status or None,
        "schedule_status": att.schedule_status or None,
        "property_text": att.prop.to_line(),
        "reply_sequence": att.reply_sequence,
        "reply_dtstamp": att.reply_dtstamp,
        "replied_at": att.replied_at,
    }


class _Batch:
    """Attendee and instance writes of one :func:`apply`, waiting to be written together.

    Puts are collected and flushed (one SELECT + one executemany INSERT/UPDATE per
    table, see :func:`objects.put_attendees`) before any change whose effect depends on
    them having been written; see :func:`apply`.
    """

    def __init__(self) -> None:
        self.instances: list[tuple[str, objects.InstanceFields]] = []
        self.attendees: list[tuple[str, str, objects.AttendeeFields]] = []
        # The object row was just inserted and nothing of it written yet: no existing
        # rows to read.  Cleared by the first flush (later segments must read).
        self.fresh = False

    def flush(self, s: Session, object_id: int, now: datetime) -> None:
        # Instances first: that is the order the engine emits them, and an attendee row
        # never depends on its instance row (no foreign key between them).
        if self.instances:
            objects.put_instances(s, object_id, self.instances, new_object=self.fresh)
            self.instances = []
        if self.attendees:
            objects.put_attendees(s, object_id, self.attendees, now=now, new_object=self.fresh)
            self.attendees = []
        self.fresh = False


def apply(
    s: Session,
    owner: str,
    uid: str,
    object_id: int | None,
    changes: Sequence[Change],
    now: datetime,
) -> int | None:
    """Write ``changes`` for (owner, uid); returns the object's row id (None if deleted).

    A change that needs the object row when there is none yet (an attendee before the
    header) is a programming error in the engine and raises ``ValueError`` so the
    transaction rolls back instead of storing half a decision.

    Batching keeps the result of applying the changes one by one, in order:

    - PutInstance / PutAttendee are buffered.  Two puts of one row merge field by field,
      later values winning, which is what two consecutive upserts store.
    - DeleteInstance, DeleteAttendee and DeleteObject first write the buffer, so a put
      before a delete of the same row is deleted and a put after it re-creates the row
      (the segments between deletes are written in order).
    - PutObject only touches the object row, ReplaceBusy only busy rows and ResolveHeld
      only held rows: none reads or writes an instance or attendee row, so they need not
      wait for the buffer (PutObject of a new object only provides its id first).
    - The buffer is written before returning, before the final version bump.

    The object's ``version`` is bumped once per apply that changed an instance or
    attendee: by the header UPDATE of PutObject when it wrote one, otherwise by a single
    :func:`objects.touch_object`.  Both run in this transaction, so one bump covers every
    row written here for the optimistic-concurrency check.
    """
    batch = _Batch()
    header_written = False
    # Created by this apply and no busy period written yet: nothing to delete.
    busy_empty = False
    for change in changes:
        if isinstance(change, PutObject):
            h = change.header
            new_id, what = objects.put_object(
                s,
                owner,
                uid,
                now=now,
                object_id=object_id,
                component=h.component_type,
                role=h.role.value,
                organizer=h.organizer or None,
                organizer_sent_by=h.organizer_sent_by or None,
                sequence=h.sequence,
                dtstamp=h.dtstamp,
                status=h.status or None,
                summary=h.summary or None,
                is_recurring=h.is_recurring,
                calendar_props=_props_text(h.calendar_props),
                timezones=serialize(*h.timezones) if h.timezones else "",
            )
            if object_id is not None and new_id != object_id:  # pragma: no cover
                batch.flush(s, object_id, now)  # the engine never switches objects
            object_id = new_id
            if what == "created":
                batch.fresh = True
                busy_empty = True
            header_written = header_written or what != "unchanged"
        elif isinstance(change, DeleteObject):
            if object_id is not None:
                batch.flush(s, object_id, now)
                objects.delete_object(s, object_id)
            object_id = None
            header_written = False
            busy_empty = False
        elif isinstance(change, ResolveHeld):
            held.resolve(s, change.held_id, change.resolution, now)
        else:
            if object_id is None:
                raise ValueError(f"{type(change).__name__} for {uid!r} before the object exists")
            if isinstance(change, PutInstance):
                batch.instances.append((change.instance.key, _instance_fields(change.instance)))
            elif isinstance(change, PutAttendee):
                att = change.attendee
                batch.attendees.append((att.instance_key, att.address, _attendee_fields(att)))
            elif isinstance(change, DeleteInstance):
                batch.flush(s, object_id, now)
                objects.delete_instance(s, object_id, change.key)
            elif isinstance(change, DeleteAttendee):
                batch.flush(s, object_id, now)
                objects.delete_attendee(s, object_id, change.instance_key, change.address)
            elif isinstance(change, ReplaceBusy):
                busy.replace_periods(
                    s,
                    object_id,
                    owner,
                    [
                        busy.BusyPeriod(p.start, p.end, p.fbtype)
                        for p in change.periods
                        if p.end > p.start  # zero-length events block no time
                    ],
                    new_object=busy_empty,
                )
                busy_empty = False
    if object_id is not None:
        batch.flush(s, object_id, now)
        if not header_written and any(
            isinstance(c, (PutInstance, DeleteInstance, PutAttendee, DeleteAttendee))
            for c in changes
        ):
            objects.touch_object(s, object_id, now)
    return object_id


def hold(
    s: Session,
    owner: str,
    uid: str,
    request: HoldRequest,
    journal_id: int | None,
    now: datetime,
) -> int:
    """Store a held message; returns its id."""
    row = held.hold(
        s,
        owner=owner,
        uid=uid,
        instance_key=request.instance_key,
        kind=cast("held.HeldKind", request.kind),
        journal_id=journal_id,
        sender=request.sender,
        method=request.method,
        payload=request.payload,
        sequence=request.sequence,
        dtstamp=request.dtstamp,
        now=now,
    )
    return row.id


def outbox_by_message_id(s: Session, message_id: str) -> OutboxRow | None:
    """The outbox row whose sent mail had this Message-ID (for DSN mapping, RFC 3464)."""
    return s.scalars(_OUTBOX_BY_MESSAGE_ID, {"message_id": message_id}).first()
