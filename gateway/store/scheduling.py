"""The bridge between the iTIP engine's values and the calendar tables.

:func:`load` builds a :class:`~gateway.domain.model.StoredObject` from rows, reading
only the attendee rows a decision needs; :func:`apply` writes a
:class:`~gateway.domain.model.Decision`'s changes back.  Both run inside the caller's
transaction so the object, its instances, attendees, busy time, held items, outbox rows
and the journal outcome commit together (ARCHITECTURE.md section 3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import select
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
from gateway.store.models import AttendeeRow, HeldRow, InstanceRow, ObjectRow, OutboxRow

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


def _split_list(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split() if v)


def _header(row: ObjectRow) -> ObjectHeader:
    return ObjectHeader(
        owner=row.owner,
        uid=row.uid,
        component_type=row.component,
        role=Role(row.role),
        organizer=row.organizer or "",
        organizer_sent_by=row.organizer_sent_by or "",
        sequence=row.sequence,
        dtstamp=row.dtstamp,
        status=row.status or "",
        summary=row.summary or "",
        is_recurring=row.is_recurring,
        calendar_props=_props_from(row.calendar_props),
        timezones=_components_from(row.timezones),
    )


def _instance(row: InstanceRow) -> StoredInstance:
    comps = _components_from(row.component_text)
    return StoredInstance(
        key=row.instance_key,
        component=comps[0] if comps else Component("VEVENT"),
        sequence=row.sequence,
        dtstamp=row.dtstamp,
        this_and_future=row.this_and_future,
        cancelled=row.cancelled,
        start=row.start_utc,
        end=row.end_utc,
        status=row.status or "",
        transp=row.transp or "",
    )


def _attendee(row: AttendeeRow) -> AttendeeState:
    try:
        prop = parse_property(row.property_text) if row.property_text else None
    except ICalError:
        prop = None
    if prop is None:
        prop = Property("ATTENDEE", "mailto:" + row.address)
    return AttendeeState(
        instance_key=row.instance_key,
        address=row.address,
        prop=prop,
        partstat=row.partstat,
        role=row.role,
        rsvp=row.rsvp,
        cutype=row.cutype,
        delegated_to=_split_list(row.delegated_to),
        delegated_from=_split_list(row.delegated_from),
        sent_by=row.sent_by or "",
        member=_split_list(row.member),
        request_status=row.request_status or "",
        schedule_status=row.schedule_status or "",
        reply_sequence=row.reply_sequence,
        reply_dtstamp=row.reply_dtstamp,
        replied_at=row.replied_at,
    )


def _held(row: HeldRow) -> HeldItem:
    return HeldItem(
        id=row.id,
        kind=row.kind,
        sender=row.sender,
        method=row.method,
        payload=row.payload,
        instance_key=row.instance_key,
        sequence=row.sequence or 0,
        dtstamp=row.dtstamp,
    )


# --- loading ------------------------------------------------------------------------


def _build(
    s: Session, row: ObjectRow, addresses: frozenset[str] | None, with_held: bool
) -> StoredObject:
    stored = StoredObject(header=_header(row))
    for inst in objects.instance_rows(s, row.id):
        stored.instances[inst.instance_key] = _instance(inst)
    rows = objects.get_attendee_rows(
        s, row.id, addresses=sorted(addresses) if addresses is not None else None
    )
    for att in rows:
        stored.attendees[(att.instance_key, att.address)] = _attendee(att)
    stored.attendees_complete = addresses is None
    if with_held:
        stored.held = [_held(h) for h in held.pending_for(s, row.owner, row.uid)]
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
    row = objects.get_object(s, owner, uid, lock=lock)
    if row is None:
        return None, None
    return _build(s, row, addresses, with_held), row.id


def load_by_id(s: Session, object_id: int) -> StoredObject | None:
    """Load a whole object (all attendees and held items) by row id."""
    row = objects.get_object_by_id(s, object_id)
    return None if row is None else _build(s, row, None, True)


def held_items(s: Session, owner: str, uid: str) -> list[HeldItem]:
    """Unresolved held items of (owner, uid), oldest first."""
    return [_held(h) for h in held.pending_for(s, owner, uid)]


def busy_between(
    s: Session, owner: str, start: datetime, end: datetime, exclude_object_id: int | None = None
) -> tuple[BusyPeriod, ...]:
    """The owner's busy periods overlapping [start, end)."""
    rows = busy.overlapping(s, owner, start, end, exclude_object_id=exclude_object_id)
    uids: dict[int, str] = {}
    out: list[BusyPeriod] = []
    for r in rows:
        if r.object_id not in uids:
            obj = objects.get_object_by_id(s, r.object_id)
            uids[r.object_id] = obj.uid if obj is not None else ""
        out.append(BusyPeriod(r.start_utc, r.end_utc, r.fbtype, uids[r.object_id]))
    return tuple(out)


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
    """
    for change in changes:
        if isinstance(change, PutObject):
            h = change.header
            row = objects.upsert_object(
                s,
                owner,
                uid,
                now=now,
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
            object_id = row.id
        elif isinstance(change, DeleteObject):
            if object_id is not None:
                objects.delete_object(s, object_id)
            object_id = None
        elif isinstance(change, ResolveHeld):
            held.resolve(s, change.held_id, change.resolution, now)
        else:
            if object_id is None:
                raise ValueError(f"{type(change).__name__} for {uid!r} before the object exists")
            if isinstance(change, PutInstance):
                objects.upsert_instance(
                    s, object_id, change.instance.key, **_instance_fields(change.instance)
                )
            elif isinstance(change, DeleteInstance):
                objects.delete_instance(s, object_id, change.key)
            elif isinstance(change, PutAttendee):
                att = change.attendee
                objects.upsert_attendee(
                    s, object_id, att.instance_key, att.address, now=now, **_attendee_fields(att)
                )
            elif isinstance(change, DeleteAttendee):
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
                )
    if object_id is not None and any(
        isinstance(c, (PutInstance, DeleteInstance, PutAttendee, DeleteAttendee)) for c in changes
    ):
        touched = objects.get_object_by_id(s, object_id)
        if touched is not None:
            objects.touch_object(s, touched, now)
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
    stmt = select(OutboxRow).where(OutboxRow.message_id == message_id).limit(1)
    return s.scalars(stmt).first()
