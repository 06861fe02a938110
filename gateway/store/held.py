"""Held items: iTIP messages set aside until they can be applied or a human decides.

RFC 5546 section 5.2: a CANCEL or REPLY may arrive before the REQUEST it refers to (mail
is not ordered).  Such messages are held and re-examined when the REQUEST arrives
(:func:`pending_for`).  Replies from unknown delegates or party crashers, COUNTER proposals
and organiser changes (section 6.1.3) wait here for the owner's decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.store.limits import check_key
from gateway.store.models import HeldRow
from gateway.store.raw import Prepared
from gateway.store.types import UTCDateTime

__all__ = [
    "HeldKind",
    "get",
    "hold",
    "list_held",
    "pending_for",
    "pending_records",
    "resolve",
]

HeldKind = Literal[
    "early-cancel",
    "early-add",
    "early-reply",
    "unknown-delegate",
    "party-crasher",
    "counter",
    "organizer-change",
]

# Built once, on the table (issue 5): plain Core statements, no ORM instances; the
# pending check runs after every REQUEST that creates an object (section 5.2.1).
_HELD = cast(Table, HeldRow.__table__)
_PENDING_FOR = (
    select(_HELD)
    .where(
        _HELD.c.owner == bindparam("owner"),
        _HELD.c.uid == bindparam("uid"),
        _HELD.c.resolved_at.is_(None),
    )
    .order_by(_HELD.c.created_at, _HELD.c.id)
)
# The same query on the raw path (gateway.store.raw), for the per-REQUEST check.
_PENDING_RECORDS = Prepared(_PENDING_FOR)
_INSERT = insert(_HELD)
_RESOLVE = (
    update(_HELD)
    .where(_HELD.c.id == bindparam("b_id"), _HELD.c.resolved_at.is_(None))
    .values(
        resolved_at=bindparam("v_now", type_=UTCDateTime()),
        resolution=bindparam("v_resolution"),
    )
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
    """Set a message aside; ``payload`` is the iCalendar text of the calendar part.

    Returns a detached snapshot of the row written (not reloaded: the caller has it all).
    """
    values: dict[str, Any] = {
        "owner": normalise(owner),
        "uid": check_key("UID", uid),
        "instance_key": instance_key,
        "kind": kind,
        "journal_id": journal_id,
        "sender": normalise(sender),
        "method": method.upper(),
        "payload": payload,
        "sequence": sequence,
        "dtstamp": dtstamp,
        "created_at": now,
        "resolved_at": None,
        "resolution": None,
    }
    new_id = s.execute(_INSERT, values).inserted_primary_key[0]  # type: ignore[attr-defined]
    return HeldRow(id=int(new_id), **values)


def get(s: Session, held_id: int) -> HeldRow | None:
    """One held item, or ``None``."""
    return s.get(HeldRow, held_id)


def pending_for(s: Session, owner: str, uid: str) -> Sequence[Row[Any]]:
    """Unresolved items for one (owner, UID), oldest first (arrival order).

    Plain rows with the columns of :class:`~gateway.store.models.HeldRow` as attributes.
    """
    return s.execute(_PENDING_FOR, {"owner": normalise(owner), "uid": uid}).all()


def pending_records(s: Session, owner: str, uid: str) -> list[dict[str, Any]]:
    """Like :func:`pending_for`, as dicts keyed by column name (the hot path's form)."""
    return _PENDING_RECORDS.mappings(s, {"owner": normalise(owner), "uid": uid})


def resolve(s: Session, held_id: int, resolution: str, now: datetime) -> bool:
    """Close an item with a resolution ("applied", "discarded", ...).

    Returns False when the item does not exist or was already resolved: resolving twice
    would hide which decision actually took effect.
    """
    params = {"b_id": held_id, "v_now": now, "v_resolution": resolution}
    result = s.execute(_RESOLVE, params)
    if result.rowcount and s.identity_map:  # type: ignore[attr-defined]
        # An ORM copy loaded earlier in this session must show the resolution.
        obj = s.identity_map.get((HeldRow, (held_id,), None))
        if obj is not None:
            s.expire(obj)
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
