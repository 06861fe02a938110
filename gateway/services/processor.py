"""Processing of journaled messages: the pipeline of ARCHITECTURE.md section 1.

For one journal row: extract the calendar parts (``gateway.mime``), establish who sent
it, parse each part into iTIP messages, and for every local recipient run the pure
engine and apply its decision - object, instances, attendee rows, held items, outbox
rows and the journal outcome - in ONE transaction.  Every row ends with exactly one
recorded outcome per part and recipient, and the journal row itself ends ``done`` or
``quarantined`` with a reason; a crash in between leaves the row leased, and it is
processed again after the lease expires (nothing accepted is lost).

The daemon's worker splits this in two (issue 5): what depends only on a row's bytes
(extraction, parsing, the RFC 5546 section 3 check) is done for a claimed group first,
in a read-only transaction (:meth:`Processor.prepare_claimed`), and the group's write
transaction then decides and applies.  On SQLite the write lock is the one resource the
SMTP intake waits for before its 250, so it is held only for the part that needs it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from gateway.domain import engine, submission
from gateway.domain.addresses import normalise
from gateway.domain.ical import Component, ICalError, parse
from gateway.domain.identity import SenderIdentity
from gateway.domain.message import ParseResult, parse_itip
from gateway.domain.model import (
    Context,
    Decision,
    ITipMessage,
    Outcome,
    OutgoingMessage,
    ResolveHeld,
    UserPolicy,
)
from gateway.domain.validate import validated
from gateway.mime.extract import CalendarPart, Extraction, calendar_method, extract
from gateway.mime.identity import sender_identity
from gateway.services.outgoing import compose_outgoing
from gateway.services.ports import FORWARD_METHOD
from gateway.store import MAX_KEY_BYTES, journal, objects, outbox, rate, scheduling
from gateway.store.tx import Tx, is_transient_error, savepoint, writers_waiting

__all__ = [
    "BatchItem",
    "Directory",
    "PartResult",
    "PreparedMessage",
    "ProcessingOptions",
    "Processor",
    "record_delivery_failure",
    "schedule_status_for",
]

log = logging.getLogger(__name__)

# Outcomes that mean "nothing usable here"; the journal row is then quarantined
# (kept, with the reason) rather than marked done.
_QUARANTINE = {Outcome.QUARANTINED_INVALID.value}
# Held items that may be re-run automatically once the object they wait for exists
# (RFC 5546 section 5.2.1); the others wait for a human.
_AUTO_RELEASE = {"early-cancel", "early-add", "early-reply", "unknown-delegate"}


class Directory(Protocol):
    """The configured local calendar users."""

    def local_user(self, address: str) -> UserPolicy | None: ...

    def is_local(self, address: str) -> bool: ...


@dataclass(frozen=True)
class ProcessingOptions:
    """Processing settings, copied from the configuration by the app."""

    hostname: str = "localhost"
    significant: frozenset[str] = frozenset(
        {"DTSTART", "DTEND", "DURATION", "DUE", "RRULE", "RDATE", "EXDATE", "STATUS", "LOCATION"}
    )
    max_instances: int = 1000
    max_attendees: int = 2000
    max_calendar_bytes: int = 2 * 1024 * 1024
    auto_reply_limit_per_hour: int = 30
    trusted_authserv_ids: tuple[str, ...] = ()
    attendee_relays: tuple[str, ...] = ()
    require_dmarc_pass: bool = False
    lease_seconds: float = 300.0
    max_attempts: int = 3
    # Stamped in X-IMIP-Gateway on every message we send; a message carrying OUR value
    # coming back is a loop.  Replicas of one deployment share it (gateway.hostname).
    marker: str = "localhost"


@dataclass(frozen=True)
class PartResult:
    """The outcome of one calendar part (or one iTIP message in it) for one recipient."""

    part_index: int
    recipient: str
    outcome: str
    reason: str
    method: str = ""
    component: str = ""
    uid: str = ""
    recurrence_id: str = ""

    def as_dict(self) -> dict[str, str | int]:
        return {
            "part": self.part_index,
            "recipient": self.recipient,
            "method": self.method,
            "component": self.component,
            "uid": self.uid,
            "recurrence_id": self.recurrence_id,
            "outcome": self.outcome,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class BatchItem:
    """What processing one row of a batch gave."""

    journal_id: int
    results: list[PartResult]
    queued: int  # outbox rows written
    error: str  # "" unless processing raised (the row was then recorded as failed)


@dataclass(frozen=True)
class PreparedMessage:
    """What processing one journal row needs that depends only on its raw bytes.

    Why it exists (issue 5): on SQLite, processing holds the database's single write
    lock for its whole group of messages, and the SMTP intake waits for that lock to
    journal a message before it may answer 250.  MIME extraction and iCalendar parsing
    are a third of the work and need no database at all, so the processing worker does
    them for a claimed group *before* it takes the lock (:meth:`Processor.prepare`).
    A journal row's bytes never change, and ``raw`` is compared before use anyway.
    """

    raw: bytes
    extraction: Extraction
    # parse_itip of each calendar part, by part index; each is used at most once
    # (a retried row is parsed afresh, never from objects a failed attempt touched).
    parsed: Mapping[int, ParseResult]


@dataclass
class _Run:
    """State of processing one journal row inside its transaction."""

    journal_id: int | None
    source: str
    extraction: Extraction
    identity: SenderIdentity
    now: datetime
    results: list[PartResult] = field(default_factory=list)
    queued: int = 0  # outbox rows written
    local: int = 0  # messages delivered to local users through the journal
    # Parts parsed before the transaction (PreparedMessage); taken at first use.
    parsed: dict[int, ParseResult] = field(default_factory=dict)

    def itip(self, part: CalendarPart) -> ParseResult:
        """The iTIP messages of ``part``: prepared ones once, else parsed now."""
        found = self.parsed.pop(part.index, None)
        if found is not None:
            return found
        return parse_itip(part.text, mime_method=part.mime_method)


class Processor:
    """Turns journal rows into outcomes; synchronous core, called in a store thread."""

    def __init__(
        self,
        directory: Directory,
        options: ProcessingOptions,
        *,
        new_message_id: Callable[[], str] | None = None,
    ) -> None:
        self.directory = directory
        self.options = options
        self._new_message_id = new_message_id or (
            lambda: f"<{uuid.uuid4().hex}@{options.hostname}>"
        )

    # --- journal rows ---------------------------------------------------------------

    def claim(self, s: Tx, now: datetime, limit: int) -> list[int]:
        """Lease up to ``limit`` pending rows (or rows whose lease expired)."""
        rows = journal.claim_pending(
            s, now=now, lease_seconds=self.options.lease_seconds, limit=limit
        )
        return [r.id for r in rows]

    def claimed_messages(self, s: Tx, journal_ids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """``{id: (source, raw)}`` of claimed rows, read without any lock (for :meth:`prepare`)."""
        return journal.raw_of_claimed(s, journal_ids)

    def prepare_claimed(self, s: Tx, journal_ids: Sequence[int]) -> dict[int, PreparedMessage]:
        """:meth:`prepare` of claimed rows, read in the caller's (read-only) transaction."""
        return self.prepare(self.claimed_messages(s, journal_ids))

    def prepare(self, claimed: Mapping[int, tuple[str, bytes]]) -> dict[int, PreparedMessage]:
        """Extract and parse claimed rows (``{id: (source, raw)}``) outside the write lock.

        Pure CPU work on the messages' bytes; pass the result to :meth:`process_batch`.
        Never raises: a row whose preparation fails is simply left out and processed
        the ordinary way (which records the failure properly).
        """
        out: dict[int, PreparedMessage] = {}
        for journal_id, (source, raw) in claimed.items():
            try:
                extraction = self._extract(source, raw)
                parsed: dict[int, ParseResult] = {}
                if extraction.dsn is None and self.options.marker not in extraction.gateway_markers:
                    for part in extraction.parts:
                        result = parse_itip(part.text, mime_method=part.mime_method)
                        for msg in result.messages:
                            validated(msg)  # remembered on the message for the engine
                        parsed[part.index] = result
                out[journal_id] = PreparedMessage(raw, extraction, parsed)
            except Exception:  # pragma: no cover - extract and parse_itip never raise
                log.exception(
                    "preparing journal row %s failed; processing it unprepared", journal_id
                )
        return out

    def _extract(self, source: str, raw: bytes) -> Extraction:
        if source == "send":
            return bare_calendar(raw)  # `imip-gateway send FILE.ics`: no mail around it
        return extract(raw, max_calendar_bytes=self.options.max_calendar_bytes)

    def process_batch(
        self,
        s: Tx,
        journal_ids: Sequence[int],
        now: datetime,
        budget_seconds: float | None = None,
        prepared: MutableMapping[int, PreparedMessage] | None = None,
    ) -> list[BatchItem]:
        """Process claimed rows in the caller's ONE transaction (group commit).

        Each message runs inside its own SAVEPOINT: a message whose processing raises is
        rolled back alone and recorded as failed (quarantined after ``max_attempts``)
        while the others commit together.  Safe because every row is already durable in
        the journal and still leased: a crash loses the batch's work, never a message,
        and the batch is processed again once the leases expire.  With
        ``budget_seconds`` the group stops once that much time was spent; the rows not
        reached are not in the result and stay claimed for the caller's next call.
        ``prepared`` (from :meth:`prepare`) is consumed: each entry is taken by the
        first attempt at its row, so a row retried later is extracted afresh.
        """
        out: list[BatchItem] = []
        started = time.monotonic()
        for journal_id in journal_ids:
            if (
                out
                and budget_seconds is not None
                and (time.monotonic() - started > budget_seconds or writers_waiting(s))
            ):
                # The group is committed by time, not by count: on SQLite the write lock
                # is held for the whole group, and intake (the SMTP 250) waits for it.
                # A writer already waiting ends it at once: its wait is the latency of
                # every message it journals.
                break
            ready = prepared.pop(journal_id, None) if prepared is not None else None
            try:
                with savepoint(s):
                    results, queued = self._process_row(s, journal_id, now, prepared=ready)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                if is_transient_error(exc):
                    # Lost a lock race with a concurrent batch (PostgreSQL aborted our
                    # statement): not the message's fault, so not counted as an attempt.
                    # Stop here so this group commits and frees its locks; the row is
                    # left out of the result, still claimed, and the caller retries it
                    # first - later rows (perhaps about the same event) must not
                    # overtake it.
                    log.warning("journal row %s: transient failure, retrying: %s", journal_id, exc)
                    break
                log.exception("processing journal row %s failed", journal_id)
                self.fail_row(s, journal_id, error, now)
                out.append(BatchItem(journal_id, [], 0, error))
                continue
            out.append(BatchItem(journal_id, results, queued, ""))
        return out

    def process_row(self, s: Tx, journal_id: int, now: datetime) -> list[PartResult]:
        """Process one journal row completely, in the caller's transaction."""
        return self._process_row(s, journal_id, now)[0]

    def _process_row(
        self,
        s: Tx,
        journal_id: int,
        now: datetime,
        row: journal.LockedMessage | None = None,
        *,
        prepared: PreparedMessage | None = None,
    ) -> tuple[list[PartResult], int]:
        # Lock the row: if our lease expired while we worked and another worker claimed
        # it, one of us waits here and then sees "done" - a decision is applied once.
        if row is None:
            row = journal.lock_row(s, journal_id)
        if row is None or row.status in ("done", "quarantined"):
            return [], 0
        raw = bytes(row.raw)
        parsed: dict[int, ParseResult] = {}
        if prepared is not None and prepared.raw == raw:
            extraction = prepared.extraction
            parsed = dict(prepared.parsed)
        else:
            extraction = self._extract(row.source, raw)
        identity = sender_identity(
            extraction,
            envelope_from=row.envelope_from or "",
            trusted_authserv_ids=self.options.trusted_authserv_ids,
            attendee_relays=self.options.attendee_relays,
        )
        if row.source == "send":
            identity = replace(identity, local_submission=True)
        run = _Run(journal_id, row.source, extraction, identity, now, parsed=parsed)
        if row.source == "relay":
            rcpts = list(row.envelope_to or [])
            self._relay(s, run, row.envelope_from or "", rcpts, raw)
            # Local recipients of relayed mail are served here, like any delivery.
            local = [r for r in rcpts if self.directory.is_local(r)]
            if local:
                self._dispatch(s, run, self._recipients(local, extraction, row.source))
        else:
            recipients = self._recipients(list(row.envelope_to or []), extraction, row.source)
            self._dispatch(s, run, recipients)
        for res in run.results:
            journal.add_outcome(
                s,
                journal_id,
                part_index=res.part_index,
                recipient=res.recipient or "-",
                outcome=res.outcome,
                reason=res.reason[:2000],
                now=now,
                method=res.method or None,
                component=res.component or None,
                uid=res.uid or None,
                recurrence_id=res.recurrence_id or None,
            )
        status, outcome, reason = _summarise(run.results)
        journal.finish(s, journal_id, status, outcome=outcome, reason=reason, now=now)
        return run.results, run.queued

    def process_now(self, s: Tx, journal_id: int, now: datetime) -> list[PartResult] | None:
        """Process a row that is still ``pending`` right away (the ``ingest`` command).

        Returns None when the row is not pending any more (a running daemon took it);
        the caller then reads the recorded outcomes from the journal.
        """
        row = journal.take_pending(s, journal_id)
        if row is None:
            return None
        return self._process_row(s, journal_id, now, row)[0]

    def fail_row(self, s: Tx, journal_id: int, error: str, now: datetime) -> bool:
        """Record a processing failure; quarantine after ``max_attempts``.

        Returns True when the row was quarantined (it will not be retried).
        """
        return journal.record_failure(
            s, journal_id, error, now=now, max_attempts=self.options.max_attempts
        )

    # --- who is this for ----------------------------------------------------------------

    def _recipients(self, envelope_to: list[str], ext: Extraction, source: str) -> list[str]:
        out: list[str] = []
        for addr in envelope_to:
            user = self.directory.local_user(addr)
            if user is not None and user.address not in out:
                out.append(user.address)
        if out or envelope_to or source not in ("ingest", "send"):
            return out
        # A piped message without --recipient: every local user the calendar names
        # (for an organiser's submission, only the ORGANIZER).
        names = ("ORGANIZER",) if source == "send" else ("ATTENDEE", "ORGANIZER")
        for part in ext.parts:
            try:
                roots = parse(part.text)
            except ICalError:
                continue
            for root in roots:
                for comp in root.walk():
                    for prop in comp.properties:
                        if prop.name in names:
                            user = self.directory.local_user(prop.value)
                            if user is not None and user.address not in out:
                                out.append(user.address)
        return out

    # --- the pipeline ---------------------------------------------------------------------

    def _dispatch(self, s: Tx, run: _Run, recipients: list[str]) -> None:
        ext = run.extraction
        if self.options.marker in ext.gateway_markers and run.source != "local":
            run.results.append(
                PartResult(0, "", Outcome.IGNORED_LOOP.value, "message was sent by this gateway")
            )
            return
        if ext.dsn is not None:
            self._delivery_report(s, run)
            return
        if not ext.parts:
            reason = "; ".join(ext.problems) or "no text/calendar or application/ics part"
            outcome = Outcome.IGNORED_NO_CALENDAR
            run.results.append(PartResult(0, "", outcome.value, f"no calendar data: {reason}"))
            return
        if not recipients:
            run.results.append(
                PartResult(
                    0,
                    "",
                    Outcome.IGNORED_NOT_LOCAL.value,
                    "no local calendar user among the recipients",
                )
            )
            return
        for part in ext.parts:
            parsed = run.itip(part)
            warnings = list(part.warnings) + parsed.warnings
            for problem in parsed.problems:
                for rcpt in recipients:
                    run.results.append(
                        PartResult(
                            part.index,
                            rcpt,
                            Outcome.QUARANTINED_INVALID.value,
                            problem,
                            method=part.method or "",
                        )
                    )
            for msg in parsed.messages:
                for rcpt in recipients:
                    if run.source == "send":
                        decision = self._submit(s, run, msg, rcpt)
                    else:
                        decision = self._decide_and_apply(s, run, msg, rcpt, part.index)
                    reason = decision.reason
                    notes = warnings + decision.warnings
                    if notes:
                        reason = f"{reason} (warnings: {'; '.join(dict.fromkeys(notes))})"
                    run.results.append(
                        PartResult(
                            part.index,
                            rcpt,
                            decision.outcome.value,
                            reason,
                            method=msg.method,
                            component=msg.component_type,
                            uid=msg.uid,
                            recurrence_id=decision.recurrence_id,
                        )
                    )

    def apply_decision(
        self,
        s: Tx,
        user: UserPolicy,
        uid: str,
        object_id: int | None,
        decision: Decision,
        now: datetime,
    ) -> None:
        """Apply a decision made outside a journaled message (operator commands)."""
        identity = SenderIdentity(from_addresses=(user.address,), local_submission=True)
        run = _Run(None, "cli", Extraction(), identity, now)
        self._apply(s, run, user, uid, object_id, decision, journal_id=None)

    def context(self, user: UserPolicy, identity: SenderIdentity, now: datetime) -> Context:
        """The engine context for ``user`` (public for operator commands)."""
        return self._context(user, identity, now)

    def _context(self, user: UserPolicy, identity: SenderIdentity, now: datetime) -> Context:
        return Context(
            owner=user,
            sender=identity,
            now=now,
            significant=self.options.significant,
            max_instances=self.options.max_instances,
            max_attendees=self.options.max_attendees,
            is_local=self.directory.is_local,
        )

    def _decide_and_apply(
        self, s: Tx, run: _Run, msg: ITipMessage, recipient: str, part_index: int
    ) -> Decision:
        user = self.directory.local_user(recipient)
        if user is None:  # pragma: no cover - recipients are filtered already
            return Decision(Outcome.IGNORED_NOT_LOCAL, f"{recipient} is not a local user")
        identity = run.identity
        if (
            self.options.require_dmarc_pass
            and identity.dmarc.value != "pass"
            and not identity.local_submission
        ):
            return Decision(
                Outcome.REJECTED_UNAUTHORISED,
                f"DMARC did not pass (dmarc={identity.dmarc.value}) and the deployment requires it",
            )
        if len(msg.uid.encode("utf-8")) > MAX_KEY_BYTES:
            # RFC 5545 sets no limit, but a UID this long cannot be indexed (PostgreSQL
            # refuses keys over ~2.7 kB) and no real client sends one.
            return Decision(
                Outcome.REJECTED_INVALID,
                f"UID is {len(msg.uid.encode('utf-8'))} bytes long; at most "
                f"{MAX_KEY_BYTES} are accepted",
            )
        ctx = self._context(user, identity, run.now)
        plan = engine.load_plan(msg, user.address)
        stored, object_id = scheduling.load(
            s,
            user.address,
            msg.uid,
            addresses=plan.attendee_addresses,
            with_held=plan.held,
        )
        window = engine.busy_window(msg, ctx)
        if window is not None:
            ctx = replace(
                ctx,
                busy=scheduling.busy_between(
                    s, user.address, window[0], window[1], exclude_object_id=object_id
                ),
            )
        decision = engine.process(msg, stored, ctx)
        self._apply(s, run, user, msg.uid, object_id, decision, journal_id=run.journal_id)
        return decision

    def _submit(self, s: Tx, run: _Run, msg: ITipMessage, owner: str) -> Decision:
        """An organiser's own event or change (``imip-gateway send``), issue 3 source 1."""
        user = self.directory.local_user(owner)
        if user is None:  # pragma: no cover - recipients are filtered already
            return Decision(Outcome.IGNORED_NOT_LOCAL, f"{owner} is not a local user")
        ctx = self._context(user, run.identity, run.now)
        stored, object_id = scheduling.load(s, user.address, msg.uid, with_held=True)
        calendar = Component("VCALENDAR", [p.copy() for p in msg.calendar.properties])
        calendar.components = [*msg.timezones, *msg.components]
        decision = submission.submit(calendar, stored, ctx)
        self._apply(s, run, user, msg.uid, object_id, decision, journal_id=run.journal_id)
        return decision

    def _relay(self, s: Tx, run: _Run, sender: str, rcpts: list[str], raw: bytes) -> None:
        """Outbound relay mode (issue 3 source 2): record the organiser copy of what a
        local organiser sends, then forward the mail unchanged to its recipients."""
        user = self.directory.local_user(sender)
        remote = [r for r in rcpts if not self.directory.is_local(r)]
        recorded: list[tuple[str, int | None]] = []
        if user is not None:
            for part in run.extraction.parts:
                parsed = run.itip(part)
                for msg in parsed.messages:
                    decision, object_id = self._record_outbound(s, run, user, msg)
                    if object_id is not None:
                        recorded.append((msg.uid, object_id))
                    run.results.append(
                        PartResult(
                            part.index,
                            user.address,
                            decision.outcome.value,
                            decision.reason,
                            method=msg.method,
                            component=msg.component_type,
                            uid=msg.uid,
                            recurrence_id=decision.recurrence_id,
                        )
                    )
        message_id = run.extraction.message_id or self._new_message_id()
        # With one recorded event, a refusal (5xx) or bounce of the forwarded mail is
        # mapped back to that attendee on the organiser copy.
        uid, object_id = recorded[0] if len(recorded) == 1 else ("", None)
        for rcpt in remote:
            outbox.enqueue(
                s,
                owner=user.address if user is not None else normalise(sender),
                sender=normalise(sender),
                recipient=rcpt,
                method=FORWARD_METHOD,
                uid=uid,
                payload=raw,
                message_id=message_id,
                now=run.now,
                journal_id=run.journal_id,
                object_id=object_id,
            )
            run.queued += 1
        run.results.append(
            PartResult(
                0,
                normalise(sender),
                Outcome.APPLIED.value,
                f"forwarded unchanged to {len(remote)} remote recipient(s)",
            )
        )

    def _record_outbound(
        self, s: Tx, run: _Run, user: UserPolicy, msg: ITipMessage
    ) -> tuple[Decision, int | None]:
        if msg.method not in ("REQUEST", "CANCEL", "ADD", "PUBLISH"):
            reason = f"{msg.method} is not an organiser message"
            return Decision(Outcome.IGNORED_UNSUPPORTED, reason), None
        organizer = normalise(msg.components[0].value("ORGANIZER") if msg.components else "")
        if organizer != user.address:
            reason = f"ORGANIZER {organizer or '(none)'} is not the sending local user"
            return Decision(Outcome.IGNORED_POLICY, f"{reason} {user.address}"), None
        ctx = self._context(user, replace(run.identity, local_submission=True), run.now)
        stored, object_id = scheduling.load(s, user.address, msg.uid, with_held=True)
        decision = submission.record_outbound(msg, stored, ctx)
        object_id = self._apply(
            s, run, user, msg.uid, object_id, decision, journal_id=run.journal_id
        )
        return decision, object_id

    def _apply(
        self,
        s: Tx,
        run: _Run,
        user: UserPolicy,
        uid: str,
        object_id: int | None,
        decision: Decision,
        *,
        journal_id: int | None,
        depth: int = 0,
    ) -> int | None:
        object_id = scheduling.apply(s, user.address, uid, object_id, decision.changes, run.now)
        for request in decision.hold:
            scheduling.hold(s, user.address, uid, request, journal_id, run.now)
        notes: list[str] = []
        for out in decision.outgoing:
            notes += self._queue(s, run, user, out, object_id)
        if notes:
            # The outcome must not claim a reply went out when it did not.
            decision.reason = f"{decision.reason}; {'; '.join(notes)}"
        if decision.release and depth < 3:
            self._release(s, run, user, uid, depth)
        return object_id

    def _release(self, s: Tx, run: _Run, user: UserPolicy, uid: str, depth: int) -> None:
        """Re-run held messages now that their object exists (RFC 5546 section 5.2.1)."""
        for item in scheduling.held_items(s, user.address, uid):
            if item.kind not in _AUTO_RELEASE:
                continue
            parsed = parse_itip(item.payload)
            msgs = [m for m in parsed.messages if m.uid == uid]
            if not msgs:
                resolve = ResolveHeld(item.id, "discarded: held payload no longer parses")
                scheduling.apply(s, user.address, uid, None, [resolve], run.now)
                continue
            # The sender was checked against the message's headers when it was held;
            # its From address is what the engine authorises against now.
            identity = SenderIdentity(from_addresses=(item.sender,))
            ctx = self._context(user, identity, run.now)
            plan = engine.load_plan(msgs[0], user.address)
            stored, object_id = scheduling.load(
                s, user.address, uid, addresses=plan.attendee_addresses, with_held=False
            )
            decision = engine.process(msgs[0], stored, ctx)
            if decision.outcome == Outcome.HELD_PENDING:
                continue  # still waiting; do not hold a second copy
            resolved = ResolveHeld(item.id, f"released: {decision.outcome.value}")
            changes = [*decision.changes, resolved]
            decision = replace(decision, changes=changes, hold=[])
            self._apply(s, run, user, uid, object_id, decision, journal_id=None, depth=depth + 1)
            run.results.append(
                PartResult(
                    -1,
                    user.address,
                    decision.outcome.value,
                    f"held {item.kind} #{item.id} from {item.sender} released: {decision.reason}",
                    method=item.method,
                    uid=uid,
                )
            )

    def _queue(
        self,
        s: Tx,
        run: _Run,
        user: UserPolicy,
        out: OutgoingMessage,
        object_id: int | None,
    ) -> list[str]:
        """Queue ``out`` for each recipient; returns notes on what was NOT sent and why."""
        ext = run.extraction
        notes: list[str] = []
        # RFC 3834 section 2: never answer automatic replies or bounces automatically.
        if out.auto and (ext.is_bounce or (ext.auto_submitted or "no") == "auto-replied"):
            why = "a bounce" if ext.is_bounce else "an automatic reply (Auto-Submitted)"
            return [f"{out.method} not sent: the message answered is {why} (RFC 3834)"]
        for recipient in out.recipients:
            if not recipient or normalise(recipient) == user.address:
                continue
            if out.auto and not rate.hit(
                s, recipient, run.now, 3600.0, self.options.auto_reply_limit_per_hour
            ):
                log.warning("automatic %s to %s suppressed: rate limit", out.method, recipient)
                notes.append(
                    f"{out.method} to {recipient} not sent: automatic-reply rate limit of "
                    f"{self.options.auto_reply_limit_per_hour} per hour reached (RFC 3834)"
                )
                continue
            composed = compose_outgoing(
                out,
                recipient=recipient,
                owner=user,
                now=run.now,
                message_id=self._new_message_id(),
                in_reply_to=ext.message_id if out.answering else None,
                references=ext.references,
                marker=self.options.marker,
            )
            if self.directory.is_local(recipient):
                # A local recipient's copy never leaves the gateway: it is journaled as an
                # inbound message in this same transaction (durable, processed next, with
                # its own outcome) instead of travelling out and back through the relay.
                journal.record_inbound(
                    s,
                    composed.data,
                    message_id=composed.message_id,
                    source="local",
                    envelope_from=user.address,
                    envelope_to=[recipient],
                    now=run.now,
                )
                run.local += 1
                continue
            outbox.enqueue(
                s,
                owner=user.address,
                sender=out.sender or user.address,
                recipient=recipient,
                method=out.method,
                uid=out.uid,
                payload=composed.data,
                message_id=composed.message_id,
                now=run.now,
                instance_key=out.instance_key,
                journal_id=run.journal_id,
                object_id=object_id,
            )
            run.queued += 1
        return notes

    # --- delivery status notifications ---------------------------------------------------

    def _delivery_report(self, s: Tx, run: _Run) -> None:
        dsn = run.extraction.dsn
        assert dsn is not None
        row = None
        for mid in dsn.original_message_ids or (
            (dsn.original_message_id,) if dsn.original_message_id else ()
        ):
            row = scheduling.outbox_by_message_id(s, mid)
            if row is not None:
                break
        if row is None:
            run.results.append(
                PartResult(
                    0,
                    "",
                    Outcome.IGNORED_UNKNOWN.value,
                    "delivery report for a message this gateway did not send",
                )
            )
            return
        for rcpt in dsn.failed() or dsn.recipients:
            if not rcpt.permanent_failure:
                continue
            address = rcpt.final_recipient or row.recipient
            mapped = record_delivery_failure(
                s, row.object_id, row.instance_key, address, rcpt.status, rcpt.diagnostic, run.now
            )
            run.results.append(
                PartResult(
                    0,
                    row.owner,
                    Outcome.APPLIED.value if mapped else Outcome.IGNORED_UNKNOWN.value,
                    f"delivery to {address} failed permanently ({rcpt.status}): "
                    + ("recorded as SCHEDULE-STATUS" if mapped else "attendee not found"),
                    method=row.method,
                    uid=row.uid,
                )
            )
        if not run.results:
            run.results.append(
                PartResult(
                    0,
                    row.owner,
                    Outcome.IGNORED_POLICY.value,
                    "delivery report without a permanent failure",
                )
            )


def record_delivery_failure(
    s: Tx,
    object_id: int | None,
    instance_key: str,
    address: str,
    status: str,
    diagnostic: str,
    now: datetime,
) -> bool:
    """Reflect a permanent delivery failure on the attendee (RFC 6638-style SCHEDULE-STATUS).

    iTIP has no message for "your invitation bounced"; CalDAV scheduling (RFC 6638
    section 3.2.9) records it as SCHEDULE-STATUS on the attendee (see
    :func:`schedule_status_for`), which is what the organiser's copy shows here too.
    ``status`` is the SMTP code or the report's enhanced status code; it is kept in
    REQUEST-STATUS's text.  Returns False when no attendee row matched.
    """
    if object_id is None:
        return False
    rows = objects.get_attendee_rows(s, object_id, addresses=[normalise(address)])
    if not rows:
        return False
    code = schedule_status_for(status)
    for att in rows:
        if instance_key and att.instance_key not in ("", instance_key):
            continue
        objects.upsert_attendee(
            s,
            object_id,
            att.instance_key,
            att.address,
            now=now,
            schedule_status=code,
            request_status=f"{code};Delivery failed;{status} {diagnostic[:200]}",
        )
    return True


def schedule_status_for(status: str | int | None) -> str:
    """The SCHEDULE-STATUS for a failed delivery (RFC 6638 section 3.2.9).

    ``status`` is an SMTP reply code (550) or an enhanced status code from a delivery
    report (RFC 3463: "5.1.1").  The mail system's own codes are not iTIP statuses:
    an unknown mailbox (SMTP 550/551/553, X.1.x "bad destination") is "3.7" (invalid
    calendar user), anything else permanent is "5.1" (could not be delivered).
    """
    text = str(status or "").strip()
    if text in ("550", "551", "553") or text.startswith("5.1."):
        return "3.7"
    return "5.1"


def bare_calendar(raw: bytes) -> Extraction:
    """An :class:`Extraction` for a bare iCalendar file (no mail around it)."""
    text = raw.decode("utf-8", "replace").lstrip("\ufeff")
    part = CalendarPart(
        index=0,
        text=text,
        content_type="text/calendar",
        mime_method=None,
        method=calendar_method(text),
        charset="utf-8",
        filename=None,
        source="text/calendar",
    )
    return Extraction(parts=(part,))


def _summarise(results: Sequence[PartResult]) -> tuple[journal.JournalStatus, str, str]:
    """Journal status, headline outcome and reason of a processed message."""
    if not results:
        return "done", Outcome.IGNORED_NO_CALENDAR.value, "nothing to do"
    outcomes = [r.outcome for r in results]
    quarantined = all(o in _QUARANTINE for o in outcomes)
    status: journal.JournalStatus = "quarantined" if quarantined else "done"
    headline = max(set(outcomes), key=outcomes.count)
    for preferred in (Outcome.APPLIED.value, Outcome.RECORDED.value):
        if preferred in outcomes:
            headline = preferred
            break
    reasons = "; ".join(dict.fromkeys(f"{r.outcome}: {r.reason}" for r in results))
    return status, headline, reasons[:4000]
