"""Durable intake: journal an inbound message, then wake the processing worker.

Every transport (SMTP/LMTP listener, IMAP poller, ``imip-gateway ingest``) hands the raw
bytes and the envelope to :class:`JournalIntake`.  :meth:`JournalIntake.accept` returns
only after the journal row is committed, so a listener may answer ``250`` (RFC 5321
section 4.2.5: once the server has said 250 it is responsible for the message) and an
IMAP poller may set ``\\Seen`` (ARCHITECTURE.md section 6, "accepted means durable").

Failures are translated for the transports:

* anything going wrong while writing (database down, disk full, store closed, a schema
  that does not match) becomes :class:`~gateway.services.ports.TemporaryFailure`; the
  cause is logged here with its traceback and never shown to the SMTP client (451);
* a message larger than the configured limit raises :class:`MessageTooLarge`, a
  permanent refusal (552 5.3.4, RFC 5321 section 4.5.3.1.10 / RFC 3463 X.3.4).

Duplicates (same Message-ID and same bytes, e.g. an MTA retrying after our 250 was lost
on the network) are recognised by the journal: :class:`~gateway.services.ports.Accepted`
says ``duplicate=True``, the transport answers 250 again, and the processing worker is
not woken for it, so the message is applied once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import compat32

from gateway.mime.headers import message_ids
from gateway.services.ports import FORWARD_METHOD, Accepted, Envelope, TemporaryFailure
from gateway.store import journal, outbox
from gateway.store.facade import Store
from gateway.store.tx import Tx

__all__ = ["Clock", "JournalIntake", "MessageTooLarge", "message_id_of"]

log = logging.getLogger(__name__)

#: Returns the current time as an aware UTC datetime (injected so tests can freeze it).
Clock = Callable[[], datetime]

# A Message-ID longer than a header line can hold is not an identifier we can trust to
# deduplicate with; RFC 5322 section 2.1.1 limits a line to 998 characters.
_MAX_MESSAGE_ID = 998


class MessageTooLarge(Exception):
    """The message exceeds the configured size limit (a permanent refusal, 552 5.3.4)."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


def message_id_of(raw: bytes) -> str | None:
    """The ``<id>`` of the first Message-ID header of ``raw``, or ``None``.

    Only the header block is parsed (``headersonly``), so a large body costs nothing.
    A missing or malformed Message-ID gives ``None``; the journal then deduplicates by
    content hash alone.
    """
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
        value = headers.get("Message-ID")
    except Exception:  # a hostile header block must never stop intake
        log.debug("could not parse the header block for a Message-ID", exc_info=True)
        return None
    if value is None:
        return None
    ids = message_ids(str(value))
    if not ids or len(ids[0]) > _MAX_MESSAGE_ID:
        return None
    return ids[0]


class JournalIntake:
    """The :class:`~gateway.services.ports.Intake` backed by the store's journal.

    ``on_accepted(journal_id)`` is the processing worker's wake-up call; it is invoked
    on the event loop after the commit, for new messages only, and must not block.
    ``max_message_bytes`` (``None`` = unlimited) is the last line of defence; listeners
    also enforce it while receiving (SIZE, RFC 1870).
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_accepted: Callable[[int], None] | None = None,
        *,
        max_message_bytes: int | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_accepted = on_accepted
        self._max_message_bytes = max_message_bytes
        self.on_forward_queued: Callable[[], None] | None = None

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        """Journal ``raw`` durably; see the module docstring for the failure contract."""
        limit = self._max_message_bytes
        if limit is not None and len(raw) > limit:
            raise MessageTooLarge(len(raw), limit)
        source = _source(envelope.source)
        message_id = message_id_of(raw)
        try:
            journal_id, duplicate, forwarded = await self._store.run(
                _record,
                raw,
                message_id=message_id,
                source=source,
                # "" is the null reverse-path of a bounce (RFC 5321 section 4.5.5).
                envelope_from=envelope.mail_from,
                envelope_to=list(envelope.rcpt_tos),
                now=self._clock(),
            )
        except Exception as exc:
            # Logged here with the cause; the transport only ever says "try later".
            log.error(
                "could not journal a %d-byte message from %r (source %s, Message-ID %s)",
                len(raw),
                envelope.mail_from,
                envelope.source,
                message_id,
                exc_info=exc,
            )
            raise TemporaryFailure("the message could not be stored; try again later") from exc
        if duplicate:
            log.info(
                "duplicate delivery of journal row %d (Message-ID %s) from %s",
                journal_id,
                message_id,
                envelope.source,
            )
        else:
            log.info(
                "journaled message %d (%d bytes, Message-ID %s) from %s",
                journal_id,
                len(raw),
                message_id,
                envelope.source,
            )
            self._wake(journal_id)
            if forwarded and self.on_forward_queued is not None:
                self.on_forward_queued()
        return Accepted(journal_id=journal_id, duplicate=duplicate)

    def _wake(self, journal_id: int) -> None:
        if self._on_accepted is None:
            return
        try:
            self._on_accepted(journal_id)
        except Exception:
            # The row is durable; the worker's own poll will find it.  Never turn an
            # accepted message into an error for the client.
            log.exception("on_accepted(%d) failed; processing will pick it up later", journal_id)


def _record(
    s: Tx,
    raw: bytes,
    *,
    message_id: str | None,
    source: journal.Source,
    envelope_from: str,
    envelope_to: list[str],
    now: datetime,
) -> tuple[int, bool, int]:
    """Journal the message; as a content filter, queue its re-injection in the same commit.

    A Postfix after-queue content filter must hand every message back (Postfix's
    FILTER_README): the unchanged bytes go to the relay for every envelope recipient,
    written to the outbox atomically with the journal row, so the mail reaches its
    mailboxes even if calendar processing later fails or quarantines it.
    """
    row, duplicate = journal.record_inbound(
        s,
        raw,
        message_id=message_id,
        source=source,
        envelope_from=envelope_from,
        envelope_to=envelope_to,
        now=now,
    )
    forwarded = 0
    if source == "filter" and not duplicate:
        for rcpt in row.envelope_to:
            outbox.enqueue(
                s,
                owner=envelope_from or "-",
                sender=envelope_from,
                recipient=rcpt,
                method=FORWARD_METHOD,
                uid="",
                payload=raw,
                message_id=message_id or f"<journal-{row.id}@imip-gateway.invalid>",
                now=now,
                journal_id=row.id,
            )
            forwarded += 1
    return row.id, duplicate, forwarded


_SOURCES: dict[str, journal.Source] = {
    "filter": "filter",
    "smtp": "smtp",
    "lmtp": "lmtp",
    "imap": "imap",
    "ingest": "ingest",
    "send": "send",
    "relay": "relay",
}


def _source(value: str) -> journal.Source:
    try:
        return _SOURCES[value]
    except KeyError:
        raise ValueError(f"unknown intake source {value!r}") from None
