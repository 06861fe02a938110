"""The inbound message journal: durable acceptance, duplicate detection, crash recovery.

A transport answers 250 (SMTP/LMTP) or marks ``\\Seen`` (IMAP) only after
:func:`record_inbound` has committed (ARCHITECTURE section 6).  Processing then claims rows
with a lease; a worker that dies leaves its rows in ``processing`` with an expired lease,
and :func:`claim_pending` hands them out again -- processing is idempotent, so a second
pass is harmless.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import Insert, Table, and_, bindparam, exists, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.domain.model import Outcome
from gateway.store.limits import clip
from gateway.store.models import JournalOutcomeRow, JournalRow
from gateway.store.raw import Prepared
from gateway.store.types import UTCDateTime

__all__ = [
    "ClaimedMessage",
    "JournalStatus",
    "LockedMessage",
    "MessageDetail",
    "MessageSummary",
    "Source",
    "add_outcome",
    "claim_pending",
    "finish",
    "get_message",
    "list_messages",
    "lock_row",
    "outcomes_for",
    "raw_of_claimed",
    "recipients_key",
    "record_failure",
    "record_inbound",
    "take_pending",
]

Source = Literal["smtp", "lmtp", "imap", "ingest", "send", "relay", "filter", "local"]
JournalStatus = Literal["pending", "processing", "done", "quarantined"]

_DUPLICATE = select(JournalRow).where(
    JournalRow.sha256 == bindparam("sha256"),
    JournalRow.message_id == bindparam("message_id"),
)
# The duplicate check reads only what it decides on (never the raw bytes).
_EARLIER = select(JournalRow.id, JournalRow.envelope_to).where(
    JournalRow.sha256 == bindparam("sha256"),
    JournalRow.message_id == bindparam("message_id"),
)
_EARLIER_NO_ID = select(JournalRow.id, JournalRow.envelope_to).where(
    JournalRow.sha256 == bindparam("sha256"), JournalRow.message_id.is_(None)
)
# Statements of the hot path are built once (SQLAlchemy's compiled cache then hits),
# on the tables rather than the ORM classes: plain Core execution skips the ORM's bulk
# persistence machinery, which cost more than the INSERT itself.
_JOURNAL = cast(Table, JournalRow.__table__)
_OUTCOMES_TABLE = cast(Table, JournalOutcomeRow.__table__)
_INSERT_NO_ID = insert(_JOURNAL).returning(_JOURNAL.c.id)
_NEW_ROW_COLUMNS = (
    "message_id",
    "sha256",
    "source",
    "envelope_from",
    "envelope_to",
    "recipients_key",
    "raw",
    "size",
    "received_at",
    "status",
    "attempts",
)


def _insert_if_unseen(dialect: str, *, without_id: bool) -> Insert:
    """``INSERT ... SELECT <values> WHERE NOT EXISTS (same bytes and Message-ID)``.

    The usual message was never seen: this one statement stores it, where the duplicate
    check and the insert used to be two round trips.  It inserts nothing when any row
    has the same bytes and Message-ID; :func:`record_inbound` then takes the careful
    path (which recipients are new, which row a retry belongs to).  The unique
    constraint still decides between two concurrent first deliveries (ON CONFLICT DO
    NOTHING, then the careful path sees the other's committed row).
    """
    binds = {name: bindparam(name, type_=_JOURNAL.c[name].type) for name in _NEW_ROW_COLUMNS}
    same_id = (
        _JOURNAL.c.message_id.is_(None)
        if without_id
        else _JOURNAL.c.message_id == binds["message_id"]
    )
    seen = select(_JOURNAL.c.id).where(_JOURNAL.c.sha256 == binds["sha256"], same_id)
    rows = select(*binds.values()).where(~exists(seen))
    stmt = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_JOURNAL)
    return (
        stmt.from_select([_JOURNAL.c[name] for name in _NEW_ROW_COLUMNS], rows)
        .on_conflict_do_nothing(index_elements=["sha256", "message_id", "recipients_key"])
        .returning(_JOURNAL.c.id)
    )


_INSERT_IF_UNSEEN = {
    (dialect, without_id): Prepared(_insert_if_unseen(dialect, without_id=without_id))
    for dialect in ("postgresql", "sqlite")
    for without_id in (False, True)
}
_INSERT = {
    "postgresql": postgresql.insert(_JOURNAL)
    .on_conflict_do_nothing(index_elements=["sha256", "message_id", "recipients_key"])
    .returning(_JOURNAL.c.id),
    "sqlite": sqlite.insert(_JOURNAL)
    .on_conflict_do_nothing(index_elements=["sha256", "message_id", "recipients_key"])
    .returning(_JOURNAL.c.id),
}
_FINISH = Prepared(
    update(_JOURNAL)
    .where(_JOURNAL.c.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        outcome=bindparam("p_outcome"),
        reason=bindparam("p_reason"),
        processed_at=bindparam("p_now", type_=UTCDateTime()),
        lease_until=None,
    )
)
_ADD_OUTCOME = Prepared(insert(_OUTCOMES_TABLE).returning(_OUTCOMES_TABLE.c.id))
# What processing reads of a row, and nothing else: ``Session.get`` would build and
# track an ORM instance (identity map, attribute instrumentation), about 5x the CPU of
# the SELECT itself.  FOR UPDATE is kept (SQLAlchemy leaves it out on SQLite, where the
# writer's BEGIN IMMEDIATE already serialises everything).
_LOCKED_COLUMNS = (
    _JOURNAL.c.id,
    _JOURNAL.c.source,
    _JOURNAL.c.status,
    _JOURNAL.c.envelope_from,
    _JOURNAL.c.envelope_to,
    _JOURNAL.c.raw,
    _JOURNAL.c.attempts,
)
_LOCK = Prepared(
    select(*_LOCKED_COLUMNS).where(_JOURNAL.c.id == bindparam("p_id")).with_for_update()
)
# Taking a pending row is one statement: the UPDATE locks the row like FOR UPDATE does,
# and on PostgreSQL a concurrent taker that committed first makes the WHERE re-check
# see ``status <> 'pending'`` (READ COMMITTED re-evaluation), so nothing is returned.
_TAKE = Prepared(
    update(_JOURNAL)
    .where(_JOURNAL.c.id == bindparam("p_id"), _JOURNAL.c.status == "pending")
    .values(attempts=_JOURNAL.c.attempts + 1)
    .returning(*_LOCKED_COLUMNS)
)
# Claiming reads only ids (never the raw bytes of up to ``limit`` messages) and leases
# them with one UPDATE, instead of loading ORM rows and flushing one UPDATE per row.
_CLAIMABLE = (
    select(_JOURNAL.c.id)
    .where(
        or_(
            _JOURNAL.c.status == "pending",
            and_(
                _JOURNAL.c.status == "processing",
                _JOURNAL.c.lease_until <= bindparam("now", type_=UTCDateTime()),
            ),
        )
    )
    .order_by(_JOURNAL.c.received_at, _JOURNAL.c.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
)
_LEASE = (
    update(_JOURNAL)
    .where(_JOURNAL.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        status="processing",
        lease_until=bindparam("lease_until", type_=UTCDateTime()),
        attempts=_JOURNAL.c.attempts + 1,
    )
    .returning(_JOURNAL.c.id, _JOURNAL.c.attempts)
)
_OUTCOMES = (
    select(JournalOutcomeRow)
    .where(JournalOutcomeRow.journal_id == bindparam("journal_id"))
    .order_by(JournalOutcomeRow.part_index, JournalOutcomeRow.id)
)


def sha256_hex(raw: bytes) -> str:
    """The journal's content hash of a message."""
    return hashlib.sha256(raw).hexdigest()


def recipients_key(recipients: Sequence[str]) -> str:
    """SHA-256 of a recipient set (order and case do not matter)."""
    joined = ",".join(sorted({normalise(r) for r in recipients}))
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()


def record_inbound(
    s: Session,
    raw: bytes,
    *,
    message_id: str | None,
    source: Source,
    envelope_from: str | None,
    envelope_to: Sequence[str],
    now: datetime,
) -> tuple[JournalRow, bool]:
    """Journal an inbound message; return ``(row, is_duplicate)``.

    A duplicate is a message with the same SHA-256 *and* the same Message-ID as one
    already journaled for the same recipients: an MTA retrying after our 250 was lost.
    The existing row is returned and nothing is written.  The same bytes for recipients
    not journaled yet (an MTA that splits recipients into separate transactions, the
    same invitation arriving in two IMAP mailboxes) get a new row holding only the new
    recipients, so each recipient is processed exactly once.  Same bytes under a
    different Message-ID are a new message (a client re-sending on purpose).
    """
    digest = sha256_hex(raw)
    message_id = clip(message_id)
    wanted = list(dict.fromkeys(normalise(addr) for addr in envelope_to))
    # Core statements on the session's connection (same transaction): the Session's own
    # execute() adds ORM bookkeeping these plain statements do not need.
    conn = s.connection()
    values = {
        "message_id": message_id,
        "sha256": digest,
        "source": source,
        "envelope_from": normalise(envelope_from) if envelope_from is not None else None,
        "envelope_to": wanted,
        "recipients_key": recipients_key(wanted),
        "raw": raw,
        "size": len(raw),
        "received_at": now,
        "status": "pending",
        "attempts": 0,
    }
    unseen = _INSERT_IF_UNSEEN[conn.dialect.name, message_id is None]
    new_id = unseen.scalar(s, values)
    if new_id is not None:
        # A detached snapshot of what was written: reloading the row (raw bytes
        # included) would cost another round trip for values the caller already has.
        return JournalRow(id=new_id, **values), False
    if message_id is None:
        earlier = conn.execute(_EARLIER_NO_ID, {"sha256": digest}).all()
    else:
        earlier = conn.execute(_EARLIER, {"sha256": digest, "message_id": message_id}).all()
    if earlier:
        covered = {addr for _id, rcpts in earlier for addr in (rcpts or [])}
        missing = [addr for addr in wanted if addr not in covered]
        if not missing:
            # The row that carries these recipients (the first one's, for a retry).
            chosen = next(
                (rid for rid, rcpts in earlier if not wanted or wanted[0] in (rcpts or [])),
                earlier[0][0],
            )
            return s.get_one(JournalRow, chosen), True
        values["envelope_to"] = missing
        values["recipients_key"] = recipients_key(missing)
    if message_id is None:
        # NULLs never conflict in a unique constraint (SQLite has one writer; on
        # PostgreSQL two replicas may both store an ID-less retry, processed idempotently).
        new_id = conn.execute(_INSERT_NO_ID, values).scalar_one()
        return JournalRow(id=new_id, **values), False
    new_id = conn.execute(_INSERT[conn.dialect.name], values).scalar()
    if new_id is None:
        # A concurrent insert of the same retry waits for the other transaction and then
        # does nothing; the committed row is visible to this next statement.
        existing = s.scalars(
            _DUPLICATE.where(JournalRow.recipients_key == values["recipients_key"]),
            {"sha256": digest, "message_id": message_id},
        ).one()
        return existing, True
    return JournalRow(id=new_id, **values), False


@dataclass(frozen=True, slots=True)
class LockedMessage:
    """What processing needs of a journal row it holds locked (a plain snapshot)."""

    id: int
    source: str
    status: str
    envelope_from: str | None
    envelope_to: list[str]
    raw: bytes
    attempts: int


def _locked(row: tuple[Any, ...] | None) -> LockedMessage | None:
    if row is None:
        return None
    jid, source, status, envelope_from, envelope_to, raw, attempts = row
    return LockedMessage(
        jid, source, status, envelope_from, list(envelope_to or []), bytes(raw), attempts
    )


def lock_row(s: Session, journal_id: int) -> LockedMessage | None:
    """The row, locked for the rest of the transaction (``SELECT ... FOR UPDATE``).

    If a worker's lease expired while it worked and another claimed the row, one of
    them waits here and then sees ``done``: a decision is applied once.
    """
    return _locked(_LOCK.first(s, {"p_id": journal_id}))


def take_pending(s: Session, journal_id: int) -> LockedMessage | None:
    """Lock a still-``pending`` row and count an attempt on it; None if it is not pending.

    For processing a message at once (``imip-gateway ingest``) without a separate claim.
    The snapshot returned shows the attempt just counted.
    """
    return _locked(_TAKE.first(s, {"p_id": journal_id}))


def record_failure(
    s: Session, journal_id: int, error: str, *, now: datetime, max_attempts: int
) -> bool:
    """Record a failed processing attempt; quarantine the row after ``max_attempts``.

    Returns True when the row is quarantined (kept with the reason, never retried),
    False when it was made claimable again.  A ``pending`` row is one whose attempt was
    counted in a transaction that rolled back with the failed decision: it is counted
    here again.
    """
    row = s.get(JournalRow, journal_id)
    if row is None:
        return True
    if row.status == "pending":
        row.attempts += 1
    if row.attempts >= max_attempts:
        finish(
            s,
            journal_id,
            "quarantined",
            outcome=Outcome.QUARANTINED_INVALID.value,
            reason=f"processing failed {row.attempts} times: {error}"[:2000],
            now=now,
        )
        return True
    row.status = "pending"
    row.lease_until = None
    row.reason = f"attempt {row.attempts} failed: {error}"[:2000]
    return False


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A journal row just leased for processing (a plain snapshot)."""

    id: int
    status: str
    attempts: int
    lease_until: datetime


def claim_pending(
    s: Session, *, now: datetime, lease_seconds: float, limit: int
) -> list[ClaimedMessage]:
    """Claim up to ``limit`` rows to process, oldest first, and lease them.

    Claimable: ``pending`` rows, and ``processing`` rows whose lease has expired (their
    worker crashed or hung).  Each claim increments ``attempts`` so a message that keeps
    crashing the processor can be quarantined by the caller.  On PostgreSQL the rows are
    locked with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers get disjoint sets.
    """
    conn = s.connection()
    ids = list(conn.execute(_CLAIMABLE, {"now": now, "limit": limit}).scalars())
    if not ids:
        return []
    lease_until = now + timedelta(seconds=lease_seconds)
    leased = conn.execute(_LEASE, {"ids": ids, "lease_until": lease_until})
    attempts: dict[int, int] = dict(leased.all())
    return [ClaimedMessage(jid, "processing", attempts[jid], lease_until) for jid in ids]


_RAW_OF_CLAIMED = select(_JOURNAL.c.id, _JOURNAL.c.source, _JOURNAL.c.raw).where(
    _JOURNAL.c.id.in_(bindparam("ids", expanding=True)),
    _JOURNAL.c.status == "processing",
)


def raw_of_claimed(s: Session, ids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
    """``{id: (source, raw bytes)}`` of the rows among ``ids`` still leased for processing.

    A plain read (no row lock, on SQLite no write lock): processing uses it to do the
    work that depends only on a message's bytes before it takes the write lock.  The
    raw bytes of a journal row never change once it is journaled.
    """
    if not ids:
        return {}
    rows = s.connection().execute(_RAW_OF_CLAIMED, {"ids": list(ids)})
    return {jid: (source, bytes(raw)) for jid, source, raw in rows}


def finish(
    s: Session,
    journal_id: int,
    status: JournalStatus,
    *,
    outcome: str,
    reason: str,
    now: datetime,
) -> None:
    """Record the final status of a message and release its lease."""
    _FINISH.execute(
        s,
        {
            "p_id": journal_id,
            "p_status": status,
            "p_outcome": outcome,
            "p_reason": reason,
            "p_now": now,
        },
    )


def add_outcome(
    s: Session,
    journal_id: int,
    *,
    part_index: int,
    recipient: str,
    outcome: str,
    reason: str,
    now: datetime,
    method: str | None = None,
    component: str | None = None,
    uid: str | None = None,
    recurrence_id: str | None = None,
) -> int:
    """Record the outcome of one calendar part for one recipient; returns its id."""
    values = {
        "journal_id": journal_id,
        "part_index": part_index,
        "recipient": normalise(recipient),
        "method": method,
        "component": component,
        "uid": clip(uid),
        "recurrence_id": clip(recurrence_id),
        "outcome": outcome,
        "reason": reason,
        "created_at": now,
    }
    return int(_ADD_OUTCOME.scalar(s, values))


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """A journal row without its raw bytes, for listings."""

    id: int
    message_id: str | None
    sha256: str
    source: str
    envelope_from: str | None
    envelope_to: list[str]
    size: int
    received_at: datetime
    status: str
    outcome: str | None
    reason: str | None
    attempts: int
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageDetail:
    """A journal row with its raw bytes and every recorded outcome."""

    message: JournalRow
    outcomes: list[JournalOutcomeRow]


_SUMMARY_COLUMNS = (
    JournalRow.id,
    JournalRow.message_id,
    JournalRow.sha256,
    JournalRow.source,
    JournalRow.envelope_from,
    JournalRow.envelope_to,
    JournalRow.size,
    JournalRow.received_at,
    JournalRow.status,
    JournalRow.outcome,
    JournalRow.reason,
    JournalRow.attempts,
    JournalRow.processed_at,
)


def list_messages(
    s: Session, limit: int = 50, offset: int = 0, status: JournalStatus | None = None
) -> list[MessageSummary]:
    """Newest messages first, without loading their bytes."""
    stmt = select(*_SUMMARY_COLUMNS).order_by(JournalRow.received_at.desc(), JournalRow.id.desc())
    if status is not None:
        stmt = stmt.where(JournalRow.status == status)
    stmt = stmt.limit(limit).offset(offset)
    return [MessageSummary(**row._asdict()) for row in s.execute(stmt)]


def outcomes_for(s: Session, journal_id: int) -> list[JournalOutcomeRow]:
    """Every outcome recorded for one message, in part order."""
    return list(s.scalars(_OUTCOMES, {"journal_id": journal_id}))


def get_message(s: Session, journal_id: int) -> MessageDetail | None:
    """One message with its outcomes, or ``None``."""
    row = s.get(JournalRow, journal_id)
    if row is None:
        return None
    return MessageDetail(message=row, outcomes=outcomes_for(s, journal_id))
