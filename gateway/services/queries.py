"""Read models for operators: events, replies, the journal and the outbox.

Each function runs inside a read transaction and returns plain JSON-ready values, so
the CLI can print them as text or ``--json`` and a future HTTP API can serve them
unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway.domain.addresses import normalise
from gateway.domain.model import StoredObject
from gateway.domain.state import percent_complete
from gateway.store import journal, objects, outbox, scheduling
from gateway.store.models import OutboxRow
from gateway.store.tx import Tx

__all__ = [
    "event_detail",
    "event_list",
    "message_detail",
    "message_list",
    "outbox_list",
]

JSON = dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def event_list(s: Tx, owner: str | None = None, limit: int = 100, offset: int = 0) -> list[JSON]:
    """One line per scheduling object, newest change first."""
    rows = objects.list_objects(
        s, owner=normalise(owner) if owner else None, limit=limit, offset=offset
    )
    return [
        {
            "owner": r.owner,
            "uid": r.uid,
            "component": r.component,
            "role": r.role,
            "organizer": r.organizer,
            "summary": r.summary,
            "sequence": r.sequence,
            "status": r.status,
            "recurring": r.is_recurring,
            "updated_at": _iso(r.updated_at),
        }
        for r in rows
    ]


def _stored_json(stored: StoredObject) -> JSON:
    h = stored.header
    instances: list[JSON] = []
    for key in sorted(stored.instances, key=lambda k: (k != "", k)):
        inst = stored.instances[key]
        atts = sorted(
            (a for (k, _), a in stored.attendees.items() if k == key), key=lambda a: a.address
        )
        instances.append(
            {
                "recurrence_id": key or None,
                "sequence": inst.sequence,
                "dtstamp": _iso(inst.dtstamp),
                "start": _iso(inst.start),
                "end": _iso(inst.end),
                "status": inst.status or None,
                "cancelled": inst.cancelled,
                "this_and_future": inst.this_and_future,
                "summary": inst.component.text("SUMMARY") or None,
                "location": inst.component.text("LOCATION") or None,
                "attendees": [
                    {
                        "address": a.address,
                        "partstat": a.partstat,
                        "role": a.role,
                        "rsvp": a.rsvp,
                        "cutype": a.cutype,
                        "delegated_to": list(a.delegated_to),
                        "delegated_from": list(a.delegated_from),
                        "request_status": a.request_status or None,
                        "schedule_status": a.schedule_status or None,
                        "reply_sequence": a.reply_sequence,
                        "reply_dtstamp": _iso(a.reply_dtstamp),
                        "replied_at": _iso(a.replied_at),
                        "percent_complete": percent_complete(a),
                    }
                    for a in atts
                ],
            }
        )
    return {
        "owner": h.owner,
        "uid": h.uid,
        "component": h.component_type,
        "role": h.role.value,
        "organizer": h.organizer or None,
        "organizer_sent_by": h.organizer_sent_by or None,
        "sequence": h.sequence,
        "dtstamp": _iso(h.dtstamp),
        "status": h.status or None,
        "summary": h.summary or None,
        "instances": instances,
        "held": [
            {
                "id": item.id,
                "kind": item.kind,
                "method": item.method,
                "sender": item.sender,
                "recurrence_id": item.instance_key or None,
                "sequence": item.sequence,
                "dtstamp": _iso(item.dtstamp),
            }
            for item in stored.held
        ],
    }


def event_detail(s: Tx, uid: str, owner: str | None = None) -> list[JSON]:
    """Every owner's copy of ``uid`` (one when ``owner`` is given), in full."""
    out: list[JSON] = []
    owners = [normalise(owner)] if owner else _owners_of(s, uid)
    for who in owners:
        stored, _ = scheduling.load(s, who, uid, with_held=True, lock=False)
        if stored is not None:
            out.append(_stored_json(stored))
    return out


def _owners_of(s: Tx, uid: str) -> list[str]:
    return [r.owner for r in objects.list_objects(s, limit=10_000) if r.uid == uid]


def load_for_owner(s: Tx, uid: str, owner: str | None) -> list[StoredObject]:
    """Full stored objects (all attendees and held items) for reply aggregation."""
    owners = [normalise(owner)] if owner else _owners_of(s, uid)
    out: list[StoredObject] = []
    for who in owners:
        stored, _ = scheduling.load(s, who, uid, with_held=True, lock=False)
        if stored is not None:
            out.append(stored)
    return out


def message_list(s: Tx, limit: int = 50, offset: int = 0, status: str | None = None) -> list[JSON]:
    """The journal, newest first, without message bytes."""
    wanted: journal.JournalStatus | None = None
    if status in ("pending", "processing", "done", "quarantined"):
        wanted = status  # type: ignore[assignment]
    elif status is not None:
        raise ValueError(f"unknown status {status!r}: pending|processing|done|quarantined")
    return [
        {
            "id": m.id,
            "message_id": m.message_id,
            "source": m.source,
            "envelope_from": m.envelope_from,
            "envelope_to": m.envelope_to,
            "size": m.size,
            "received_at": _iso(m.received_at),
            "status": m.status,
            "outcome": m.outcome,
            "reason": m.reason,
            "attempts": m.attempts,
            "processed_at": _iso(m.processed_at),
        }
        for m in journal.list_messages(s, limit=limit, offset=offset, status=wanted)
    ]


def message_detail(s: Tx, journal_id: int, *, with_raw: bool = False) -> JSON | None:
    """One journal row with its per-part outcomes."""
    detail = journal.get_message(s, journal_id)
    if detail is None:
        return None
    m = detail.message
    out: JSON = {
        "id": m.id,
        "message_id": m.message_id,
        "sha256": m.sha256,
        "source": m.source,
        "envelope_from": m.envelope_from,
        "envelope_to": m.envelope_to,
        "size": m.size,
        "received_at": _iso(m.received_at),
        "status": m.status,
        "outcome": m.outcome,
        "reason": m.reason,
        "attempts": m.attempts,
        "processed_at": _iso(m.processed_at),
        "outcomes": [
            {
                "part": o.part_index,
                "recipient": o.recipient,
                "method": o.method,
                "component": o.component,
                "uid": o.uid,
                "recurrence_id": o.recurrence_id,
                "outcome": o.outcome,
                "reason": o.reason,
            }
            for o in detail.outcomes
        ],
    }
    if with_raw:
        out["raw"] = bytes(m.raw).decode("utf-8", "replace")
    return out


def _outbox_json(r: OutboxRow) -> JSON:
    return {
        "id": r.id,
        "status": r.status,
        "method": r.method,
        "owner": r.owner,
        "sender": r.sender,
        "recipient": r.recipient,
        "uid": r.uid,
        "recurrence_id": r.instance_key or None,
        "attempts": r.attempts,
        "next_attempt_at": _iso(r.next_attempt_at),
        "last_error": r.last_error,
        "message_id": r.message_id,
        "created_at": _iso(r.created_at),
        "sent_at": _iso(r.sent_at),
        "journal_id": r.journal_id,
    }


def outbox_list(s: Tx, status: str | None = None, limit: int = 100) -> list[JSON]:
    """Outbox rows, newest first."""
    wanted: outbox.OutboxStatus | None = None
    if status in ("pending", "sending", "sent", "failed"):
        wanted = status  # type: ignore[assignment]
    elif status is not None:
        raise ValueError(f"unknown status {status!r}: pending|sending|sent|failed")
    return [_outbox_json(r) for r in outbox.list_outbox(s, status=wanted, limit=limit)]
