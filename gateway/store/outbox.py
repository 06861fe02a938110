"""The outbox: outgoing iTIP mail, written with the change that caused it, sent by workers.

Life of a row::

    pending --claim_due--> sending --mark_sent--> sent
       ^                      |  \\--mark_failed--> failed --retry_now--> pending
       +------mark_retry------+
       +---- lease expired (worker crashed): claim_due takes it again

Leases make crashed workers harmless (ARCHITECTURE section 6): a row in ``sending`` whose
``lease_until`` has passed is claimable again.  On PostgreSQL claims use
``FOR UPDATE SKIP LOCKED`` so workers on several replicas never take the same row; on
SQLite the single writer serialises them.  ``attempts`` counts claims, so a row that
crashes its worker every time still reaches its retry limit.

Hot path (issue 5): :func:`enqueue`, :func:`claim_due` and the ``mark_*`` functions run
statements built once on the table (plain Core, no ORM instances or flushes).  A claim is
one ``SELECT ... FOR UPDATE SKIP LOCKED`` of the due ids and one ``UPDATE ... RETURNING``
of those rows, which returns them as :class:`OutboxMessage` snapshots.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.store.models import OutboxRow
from gateway.store.raw import Prepared
from gateway.store.types import UTCDateTime

__all__ = [
    "OutboxMessage",
    "OutboxStatus",
    "backoff_delay",
    "claim_due",
    "enqueue",
    "get",
    "list_outbox",
    "mark_failed",
    "mark_retry",
    "mark_sent",
    "mark_sent_many",
    "purge",
    "release",
    "retry_now",
]

OutboxStatus = Literal["pending", "sending", "sent", "failed"]


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """An outbox row as claimed (a snapshot: the columns of :class:`OutboxRow`)."""

    id: int
    journal_id: int | None
    object_id: int | None
    owner: str
    sender: str
    recipient: str
    method: str
    uid: str
    instance_key: str
    payload: bytes
    message_id: str
    status: str
    attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    lease_until: datetime | None
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None


# Statements of the hot path, built once on the table (see the module docstring).
_OUTBOX = cast(Table, OutboxRow.__table__)
_NOW = bindparam("now", type_=UTCDateTime())
_DUE = (
    select(_OUTBOX.c.id)
    .where(
        or_(
            and_(_OUTBOX.c.status == "pending", _OUTBOX.c.next_attempt_at <= _NOW),
            and_(_OUTBOX.c.status == "sending", _OUTBOX.c.lease_until <= _NOW),
        )
    )
    .order_by(_OUTBOX.c.next_attempt_at, _OUTBOX.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
# The rows just locked by _DUE: the lease and the attempt, returned as updated.
_LEASE = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status="sending",
        lease_owner=bindparam("lease_owner"),
        lease_until=bindparam("lease_until", type_=UTCDateTime()),
        attempts=_OUTBOX.c.attempts + 1,
    )
    .returning(*(_OUTBOX.c[f.name] for f in fields(OutboxMessage)))
)
_INSERT = Prepared(insert(_OUTBOX).returning(_OUTBOX.c.id))


def _conclude(holder: bool, **values: Any) -> Prepared:
    stmt = update(_OUTBOX).where(_OUTBOX.c.id == bindparam("b_id"))
    if holder:
        # Only the lease holder may conclude: a worker whose lease expired and whose row
        # was re-claimed elsewhere must not overwrite the new holder's bookkeeping.
        stmt = stmt.where(
            _OUTBOX.c.status == "sending", _OUTBOX.c.lease_owner == bindparam("b_holder")
        )
    return Prepared(stmt.values(**values, lease_owner=None, lease_until=None))


# Keyed by "a lease holder is given".
_SENT = {
    flag: _conclude(flag, status="sent", sent_at=bindparam("v_now", type_=UTCDateTime()))
    for flag in (False, True)
}
_RETRY = {
    flag: _conclude(
        flag,
        status="pending",
        last_error=bindparam("v_error"),
        next_attempt_at=bindparam("v_next", type_=UTCDateTime()),
    )
    for flag in (False, True)
}
_RELEASE = _conclude(True, status="pending", attempts=_OUTBOX.c.attempts - 1)
_FAILED = {
    flag: _conclude(flag, status="failed", last_error=bindparam("v_error"))
    for flag in (False, True)
}


def enqueue(
    s: Session,
    *,
    owner: str,
    sender: str,
    recipient: str,
    method: str,
    uid: str,
    payload: bytes,
    message_id: str,
    now: datetime,
    instance_key: str = "",
    journal_id: int | None = None,
    object_id: int | None = None,
    next_attempt_at: datetime | None = None,
) -> int:
    """Queue one message (the complete RFC 5322 bytes) for ``recipient``; returns its id."""
    values = {
        "journal_id": journal_id,
        "object_id": object_id,
        "owner": normalise(owner),
        "sender": normalise(sender),
        "recipient": normalise(recipient),
        "method": method.upper(),
        "uid": uid,
        "instance_key": instance_key,
        "payload": payload,
        "message_id": message_id,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": next_attempt_at or now,
        "created_at": now,
    }
    return int(_INSERT.scalar(s, values))


def claim_due(
    s: Session, *, now: datetime, lease_owner: str, lease_seconds: float, limit: int
) -> list[OutboxMessage]:
    """Lease up to ``limit`` rows that are due, oldest due first.

    Due: ``pending`` with ``next_attempt_at <= now``, or ``sending`` with an expired lease.
    The rows are locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent claimers
    get disjoint sets) and returned as leased, ``attempts`` already counted.
    """
    ids = list(s.execute(_DUE, {"now": now, "limit": limit}).scalars())
    if not ids:
        return []
    params = {
        "ids": ids,
        "lease_owner": lease_owner,
        "lease_until": now + timedelta(seconds=lease_seconds),
    }
    claimed = [OutboxMessage(**row._mapping) for row in s.execute(_LEASE, params)]
    # RETURNING gives no order; the claim's order is the SELECT's.
    claimed.sort(key=lambda m: (m.next_attempt_at, m.id))
    _forget(s, ids)
    return claimed


def _forget(s: Session, ids: Iterable[int]) -> None:
    """Expire ORM copies of rows a Core statement just changed (callers of :func:`get`)."""
    if not s.identity_map:
        return
    for outbox_id in ids:
        obj = s.identity_map.get((OutboxRow, (outbox_id,), None))
        if obj is not None:
            s.expire(obj)


def _run(
    s: Session, stmt: Prepared, outbox_id: int, holder: str | None, params: dict[str, Any]
) -> bool:
    params["b_id"] = outbox_id
    if holder is not None:
        params["b_holder"] = holder
    changed = stmt.execute(s, params) > 0
    if changed:
        _forget(s, (outbox_id,))
    return changed


def mark_sent(s: Session, outbox_id: int, now: datetime, *, lease_owner: str | None = None) -> bool:
    """The relay accepted the message.  Returns False if the lease was lost."""
    stmt = _SENT[lease_owner is not None]
    return _run(s, stmt, outbox_id, lease_owner, {"v_now": now})


def mark_sent_many(
    s: Session, outbox_ids: Sequence[int], now: datetime, *, lease_owner: str
) -> list[int]:
    """:func:`mark_sent` for several rows in the caller's one transaction (the outbox
    worker's group commit); returns the ids whose lease was lost."""
    stmt = _SENT[True]
    return [
        outbox_id
        for outbox_id in outbox_ids
        if not _run(s, stmt, outbox_id, lease_owner, {"v_now": now})
    ]


def release(s: Session, outbox_ids: Sequence[int], *, lease_owner: str) -> int:
    """Give back rows claimed but never handed to the relay (a worker shutting down):
    due again at once for any worker, their claim not counted as an attempt.
    Returns how many rows were released (a lost lease is left to its new holder)."""
    released = 0
    for outbox_id in outbox_ids:
        released += _RELEASE.execute(s, {"b_id": outbox_id, "b_holder": lease_owner})
    if released:
        _forget(s, outbox_ids)
    return released


def mark_retry(
    s: Session,
    outbox_id: int,
    error: str,
    next_attempt_at: datetime,
    *,
    lease_owner: str | None = None,
) -> bool:
    """A temporary failure (4xx, network): try again at ``next_attempt_at``."""
    stmt = _RETRY[lease_owner is not None]
    return _run(s, stmt, outbox_id, lease_owner, {"v_error": error, "v_next": next_attempt_at})


def mark_failed(
    s: Session, outbox_id: int, error: str, now: datetime, *, lease_owner: str | None = None
) -> bool:
    """A permanent failure (5xx, or retries exhausted): stop trying, keep the error."""
    del now  # failure time is the row's last lease; kept in the signature for symmetry
    return _run(s, _FAILED[lease_owner is not None], outbox_id, lease_owner, {"v_error": error})


def backoff_delay(
    attempts: int, *, base_seconds: float = 60.0, cap_seconds: float = 6 * 3600.0, jitter: float
) -> timedelta:
    """Exponential backoff with "equal jitter" after ``attempts`` failed tries.

    ``jitter`` in [0, 1] is supplied by the caller (randomness is injected, so tests are
    deterministic): the delay lies between half and all of ``base * 2**(attempts-1)``,
    capped at ``cap_seconds``.  Jitter keeps many rows failing together (a relay outage)
    from retrying in lock step.
    """
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")
    exponent = max(0, attempts - 1)
    full = min(cap_seconds, base_seconds * (2.0 ** min(exponent, 32)))
    return timedelta(seconds=full / 2 + jitter * full / 2)


def get(s: Session, outbox_id: int) -> OutboxRow | None:
    """One outbox row, or ``None``."""
    return s.get(OutboxRow, outbox_id)


def list_outbox(
    s: Session, status: OutboxStatus | None = None, limit: int = 100, offset: int = 0
) -> list[OutboxRow]:
    """Outbox rows, newest first, optionally of one status."""
    stmt = select(OutboxRow)
    if status is not None:
        stmt = stmt.where(OutboxRow.status == status)
    stmt = (
        stmt.order_by(OutboxRow.created_at.desc(), OutboxRow.id.desc()).limit(limit).offset(offset)
    )
    return list(s.scalars(stmt))


def retry_now(
    s: Session, ids: Iterable[int] | None = None, *, now: datetime, all_failed: bool = False
) -> int:
    """Make failed (or pending) rows due now; returns how many rows changed.

    Either ``ids`` (rows in ``failed`` or ``pending``) or ``all_failed=True``.  Rows being
    sent are left alone: their worker still holds the lease.
    """
    if (ids is None) == (not all_failed):
        raise ValueError("give either ids or all_failed=True")
    stmt = update(OutboxRow).values(status="pending", next_attempt_at=now)
    if all_failed:
        stmt = stmt.where(OutboxRow.status == "failed")
    else:
        wanted = sorted(set(ids or ()))
        if not wanted:
            return 0
        stmt = stmt.where(OutboxRow.id.in_(wanted), OutboxRow.status.in_(("failed", "pending")))
    result = s.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)


def purge(s: Session, older_than: datetime, statuses: Iterable[OutboxStatus] = ("sent",)) -> int:
    """Delete finished rows older than ``older_than``; returns how many were deleted.

    Age is counted from ``sent_at`` for sent rows, else from ``created_at``.  Rows in
    ``pending`` or ``sending`` can be purged only if asked for explicitly.
    """
    wanted = sorted(set(statuses))
    if not wanted:
        return 0
    stmt = delete(OutboxRow).where(
        OutboxRow.status.in_(wanted),
        func.coalesce(OutboxRow.sent_at, OutboxRow.created_at) < older_than,
    )
    result = s.execute(stmt)
    return int(getattr(result, "rowcount", 0) or 0)
