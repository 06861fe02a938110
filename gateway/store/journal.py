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
from typing import Literal, cast

from sqlalchemy import Table, and_, bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.domain.model import Outcome
from gateway.store.limits import clip
from gateway.store.models import JournalOutcomeRow, JournalRow
from gateway.store.types import UTCDateTime

__all__ = [
    "JournalStatus",
    "MessageDetail",
    "MessageSummary",
    "Source",
    "add_outcome",
    "claim_pending",
    "finish",
    "get_message",
    "list_messages",
    "outcomes_for",
    "recipients_key",
    "record_inbound",
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
_INSERT = {
    "postgresql": postgresql.insert(_JOURNAL)
    .on_conflict_do_nothing(index_elements=["sha256", "message_id", "recipients_key"])
    .returning(_JOURNAL.c.id),
    "sqlite": sqlite.insert(_JOURNAL)
    .on_conflict_do_nothing(index_elements=["sha256", "message_id", "recipients_key"])
    .returning(_JOURNAL.c.id),
}
_FINISH = (
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
_ADD_OUTCOME = insert(_OUTCOMES_TABLE).returning(_OUTCOMES_TABLE.c.id)
_CLAIMABLE = (
    select(JournalRow)
    .where(
        or_(
            JournalRow.status == "pending",
            and_(
                JournalRow.status == "processing",
                JournalRow.lease_until <= bindparam("now", type_=UTCDateTime()),
            ),
        )
    )
    .order_by(JournalRow.received_at, JournalRow.id)
    .limit(bindparam("limit"))
    .with_for_update(skip_locked=True)
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
    if message_id is None:
        earlier = s.execute(_EARLIER_NO_ID, {"sha256": digest}).all()
    else:
        earlier = s.execute(_EARLIER, {"sha256": digest, "message_id": message_id}).all()
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
        wanted = missing
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
    if message_id is None:
        # NULLs never conflict in a unique constraint (SQLite has one writer; on
        # PostgreSQL two replicas may both store an ID-less retry, processed idempotently).
        row = JournalRow(**values)
        s.add(row)
        s.flush()
        return row, False
    new_id = s.execute(_INSERT[s.get_bind().dialect.name], values).scalar()
    if new_id is None:
        # A concurrent insert of the same retry waits for the other transaction and then
        # does nothing; the committed row is visible to this next statement.
        existing = s.scalars(
            _DUPLICATE.where(JournalRow.recipients_key == values["recipients_key"]),
            {"sha256": digest, "message_id": message_id},
        ).one()
        return existing, True
    # A detached snapshot of what was written: reloading the row (raw bytes included)
    # would cost another round trip for values the caller already has.
    return JournalRow(id=new_id, **values), False


def lock_row(s: Session, journal_id: int) -> JournalRow | None:
    """The row, locked for the rest of the transaction (``SELECT ... FOR UPDATE``).

    If a worker's lease expired while it worked and another claimed the row, one of
    them waits here and then sees ``done``: a decision is applied once.
    """
    return s.get(JournalRow, journal_id, with_for_update=True)


def take_pending(s: Session, journal_id: int) -> JournalRow | None:
    """Lock a still-``pending`` row and count an attempt on it; None if it is not pending.

    For processing a message at once (``imip-gateway ingest``) without a separate claim.
    """
    row = lock_row(s, journal_id)
    if row is None or row.status != "pending":
        return None
    row.attempts += 1
    return row


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


def claim_pending(
    s: Session, *, now: datetime, lease_seconds: float, limit: int
) -> list[JournalRow]:
    """Claim up to ``limit`` rows to process, oldest first, and lease them.

    Claimable: ``pending`` rows, and ``processing`` rows whose lease has expired (their
    worker crashed or hung).  Each claim increments ``attempts`` so a message that keeps
    crashing the processor can be quarantined by the caller.  On PostgreSQL the rows are
    locked with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers get disjoint sets.
    """
    rows = list(s.scalars(_CLAIMABLE, {"now": now, "limit": limit}))
    lease_until = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.status = "processing"
        row.lease_until = lease_until
        row.attempts += 1
    s.flush()
    return rows


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
    s.execute(
        _FINISH,
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
) -> JournalOutcomeRow:
    """Record the outcome of one calendar part for one recipient."""
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
    new_id = s.execute(_ADD_OUTCOME, values).scalar_one()
    return JournalOutcomeRow(id=new_id, **values)  # a detached snapshot, like the insert


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
