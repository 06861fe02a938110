"""Held items: iTIP messages set aside until they can be applied or a human decides.

RFC 5546 section 5.2: a CANCEL or REPLY may arrive before the REQUEST it refers to (mail
is not ordered).  Such messages are held and re-examined when the REQUEST arrives
(:func:`pending_for`).  Replies from unknown delegates or party crashers, COUNTER proposals
and organiser changes (section 6.1.3) wait here for the owner's decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.store.limits import check_key
from gateway.store.models import HeldRow

__all__ = ["HeldKind", "get", "hold", "list_held", "pending_for", "resolve"]

HeldKind = Literal[
    "early-cancel",
    "early-add",
    "early-reply",
    "unknown-delegate",
    "party-crasher",
    "counter",
    "organizer-change",
]

_PENDING_FOR = (
    select(HeldRow)
    .where(
        HeldRow.owner == bindparam("owner"),
        HeldRow.uid == bindparam("uid"),
        HeldRow.resolved_at.is_(None),
    )
    .order_by(HeldRow.created_at, HeldRow.id)
)


def hold(
    s: Session,
    *,
    owner: str,
    uid: str,
    kind: HeldKind,
    sender: str,
    method: str,
    payload: str,
    now: datetime,
    instance_key: str = "",
    journal_id: int | None = None,
    sequence: int | None = None,
    dtstamp: datetime | None = None,
) -> HeldRow:
    """Set a message aside; ``payload`` is the iCalendar text of the calendar part."""
    row = HeldRow(
        owner=normalise(owner),
        uid=check_key("UID", uid),
        instance_key=instance_key,
        kind=kind,
        journal_id=journal_id,
        sender=normalise(sender),
        method=method.upper(),
        payload=payload,
        sequence=sequence,
        dtstamp=dtstamp,
        created_at=now,
    )
    s.add(row)
    s.flush()
    return row


def get(s: Session, held_id: int) -> HeldRow | None:
    """One held item, or ``None``."""
    return s.get(HeldRow, held_id)


def pending_for(s: Session, owner: str, uid: str) -> list[HeldRow]:
    """Unresolved items for one (owner, UID), oldest first (arrival order)."""
    return list(s.scalars(_PENDING_FOR, {"owner": normalise(owner), "uid": uid}))


def resolve(s: Session, held_id: int, resolution: str, now: datetime) -> bool:
    """Close an item with a resolution ("applied", "discarded", ...).

    Returns False when the item does not exist or was already resolved: resolving twice
    would hide which decision actually took effect.
    """
    result = s.execute(
        update(HeldRow)
        .where(HeldRow.id == held_id, HeldRow.resolved_at.is_(None))
        .values(resolved_at=now, resolution=resolution)
    )
    return bool(getattr(result, "rowcount", 0))


def list_held(
    s: Session,
    owner: str | None = None,
    *,
    include_resolved: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> list[HeldRow]:
    """Held items, oldest first, optionally of one owner."""
    stmt = select(HeldRow)
    if owner is not None:
        stmt = stmt.where(HeldRow.owner == normalise(owner))
    if not include_resolved:
        stmt = stmt.where(HeldRow.resolved_at.is_(None))
    stmt = stmt.order_by(HeldRow.created_at, HeldRow.id).limit(limit).offset(offset)
    return list(s.scalars(stmt))
