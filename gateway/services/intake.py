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

Group commit: messages whose ``accept`` calls overlap (several SMTP sessions, LMTP and
IMAP at once) are journaled in one transaction.  While one journal transaction is in
flight, new messages queue; when it has committed, everything queued goes into the next
one.  A lone message is never delayed, and under load the per-transaction cost (BEGIN,
COMMIT, on PostgreSQL a WAL flush of about a millisecond) is shared.  The contract is
per message and unchanged: each ``accept`` returns only after the commit holding its
row; if the group's transaction fails, each message of the group is retried in a
transaction of its own, so a message that cannot be stored fails alone (451 for it) and
a database that is down fails every one of them; duplicates are still recognised, also
between two copies in the same group (the second sees the first's row).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

    Only the header block is read, so a large body costs nothing.  A missing or
    malformed Message-ID gives ``None``; the journal then deduplicates by content hash
    alone.  The answer is exactly that of the standard library's header parser (which
    decides how the message was deduplicated so far); a direct scan of the header lines
    gives it for plain ASCII headers at a fraction of the cost, anything else goes
    through the parser itself.
    """
    try:
        value = _scan_message_id(raw)
    except _Unusual:
        value = _parsed_message_id(raw)
    if value is None:
        return None
    ids = message_ids(value)
    if not ids or len(ids[0]) > _MAX_MESSAGE_ID:
        return None
    return ids[0]


class _Unusual(Exception):
    """A header block the direct scan leaves to the full parser (non-ASCII bytes)."""


# The email package's test for "still in the header block" (email.feedparser.headerRE):
# a unix From_ line, a field name and colon, or a continuation line.
_HEADER_LINE = re.compile(rb"From |[\041-\071\073-\176]*:|[\t ]")
# One line and its terminator; like the email package, CR, LF and CRLF all end a line.
_LINE = re.compile(rb"([^\r\n]*)(?:\r\n|\r|\n|$)")


def _scan_message_id(raw: bytes) -> str | None:
    """The raw value of the first Message-ID field, read as ``email.feedparser`` would.

    Mirrors ``FeedParser._parsegen``/``_parse_headers`` under ``compat32``: the block
    ends at the first line that is not a header line; ``From `` lines and lines with an
    empty field name are skipped together with their continuation lines; the first field
    whose name is ``message-id`` (any case, no space before the colon) wins, with its
    continuation lines.  Folding whitespace is kept as spaces: the IDs are then found by
    :func:`message_ids`, for which any whitespace is a separator.
    """
    pos = 0
    size = len(raw)
    found: list[bytes] | None = None
    in_header = False  # a header is open, so a continuation line belongs to it
    while pos < size:
        match = _LINE.match(raw, pos)
        assert match is not None  # the pattern matches the empty string
        line = match.group(1)
        end = match.end()
        if end == pos:  # pragma: no cover - an empty match only happens at the end
            break
        pos = end
        if not _HEADER_LINE.match(line):
            break  # the blank separator line, or a body line without one
        if not line.isascii():
            raise _Unusual
        if line[:1] in (b" ", b"\t"):
            if found is not None and in_header:
                found.append(line)
            continue
        if found is not None:
            break  # the Message-ID field is complete
        in_header = False
        if line.startswith(b"From "):
            continue  # unix From_ line (or a misplaced one): never a header
        colon = line.find(b":")
        if colon == 0:
            continue  # no field name: skipped by the parser, with its continuations
        in_header = True
        if line[:colon].lower() == b"message-id":
            found = [line[colon + 1 :]]
    if found is None:
        return None
    return " ".join(part.decode("ascii") for part in found)


def _parsed_message_id(raw: bytes) -> str | None:
    """The first Message-ID field's value from the standard library's header parser."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw)
        value = headers.get("Message-ID")
    except Exception:  # a hostile header block must never stop intake
        log.debug("could not parse the header block for a Message-ID", exc_info=True)
        return None
    return None if value is None else str(value)


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
        max_group: int = 64,
        max_group_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self._store = store
        self._clock = clock
        self._on_accepted = on_accepted
        self._max_message_bytes = max_message_bytes
        self.on_forward_queued: Callable[[], None] | None = None
        # Group commit (module docstring): at most this many messages, and about this
        # many bytes, per journal transaction (a group always takes at least one).
        self._max_group = max(1, max_group)
        self._max_group_bytes = max_group_bytes
        self._queue: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        """Journal ``raw`` durably; see the module docstring for the failure contract."""
        limit = self._max_message_bytes
        if limit is not None and len(raw) > limit:
            raise MessageTooLarge(len(raw), limit)
        source = _source(envelope.source)
        message_id = message_id_of(raw)
        pending = _Pending(
            raw,
            message_id,
            source,
            # "" is the null reverse-path of a bounce (RFC 5321 section 4.5.5).
            envelope.mail_from,
            list(envelope.rcpt_tos),
            self._clock(),
            asyncio.get_running_loop().create_future(),
        )
        try:
            journal_id, duplicate, forwarded = await self._journal(pending)
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

    async def _journal(self, pending: _Pending) -> _Result:
        """Queue ``pending`` for the next journal transaction and wait for its commit."""
        self._queue.append(pending)
        writer = self._writer
        if writer is None or writer.done() or writer.get_loop() is not asyncio.get_running_loop():
            self._writer = asyncio.create_task(self._write_groups(), name="journal-intake")
        # shield: a caller that gives up (client gone) must not cancel the group's
        # transaction for the others; its message may still commit, which the journal's
        # duplicate detection makes harmless when the client retries.
        return await asyncio.shield(pending.result)

    async def _write_groups(self) -> None:
        """Commit queued messages group by group until the queue is empty."""
        group: list[_Pending] = []
        try:
            while self._queue:
                group = self._take_group()
                await self._commit_group(group)
        finally:
            self._writer = None
            # Messages are left unresolved only when this task was cancelled (the event
            # loop is shutting down): their callers must get an answer, not wait forever.
            stopped = RuntimeError("journal intake stopped")
            for pending in [*group, *self._queue]:
                _fail(pending, stopped)
            self._queue = []

    def _take_group(self) -> list[_Pending]:
        size = 0
        count = 0
        for pending in self._queue:
            if count and (
                count >= self._max_group or size + len(pending.raw) > self._max_group_bytes
            ):
                break
            size += len(pending.raw)
            count += 1
        group, self._queue = self._queue[:count], self._queue[count:]
        return group

    async def _commit_group(self, group: list[_Pending]) -> None:
        if len(group) > 1:
            try:
                results = await self._store.run(_record_group, group)
            except Exception:
                # Something in the group failed and the transaction rolled back.  Retry
                # each message alone: only the one that cannot be stored is refused.
                log.warning(
                    "journaling a group of %d messages failed; retrying them one by one",
                    len(group),
                    exc_info=True,
                )
            else:
                for pending, result in zip(group, results, strict=True):
                    _resolve(pending, result)
                return
        for pending in group:
            try:
                alone = await self._store.run(_record_group, [pending])
            except Exception as exc:
                _fail(pending, exc)
            else:
                _resolve(pending, alone[0])

    def _wake(self, journal_id: int) -> None:
        if self._on_accepted is None:
            return
        try:
            self._on_accepted(journal_id)
        except Exception:
            # The row is durable; the worker's own poll will find it.  Never turn an
            # accepted message into an error for the client.
            log.exception("on_accepted(%d) failed; processing will pick it up later", journal_id)


#: ``(journal id, duplicate, messages queued for forwarding)`` of one journaled message.
_Result = tuple[int, bool, int]


@dataclass(slots=True)
class _Pending:
    """A message waiting for its journal transaction, and where its caller waits."""

    raw: bytes
    message_id: str | None
    source: journal.Source
    envelope_from: str
    envelope_to: list[str]
    now: datetime
    result: asyncio.Future[_Result] = field(repr=False)


def _resolve(pending: _Pending, result: _Result) -> None:
    if not pending.result.done():
        pending.result.set_result(result)


def _fail(pending: _Pending, exc: Exception) -> None:
    if not pending.result.done():
        pending.result.set_exception(exc)


def _record_group(s: Tx, group: Sequence[_Pending]) -> list[_Result]:
    """Journal every message of a group in the caller's one transaction."""
    return [
        _record(
            s,
            p.raw,
            message_id=p.message_id,
            source=p.source,
            envelope_from=p.envelope_from,
            envelope_to=p.envelope_to,
            now=p.now,
        )
        for p in group
    ]


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
