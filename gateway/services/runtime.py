"""Synchronous use cases for the command line: ingest, send, counter, aggregation.

The daemon processes journal rows in the background; the CLI wants an answer now.
Both share :class:`~gateway.services.processor.Processor`, so ``imip-gateway ingest``
takes exactly the path a message delivered over SMTP takes (journal first, then the
same decision code), and ``imip-gateway send`` journals the submitted calendar with
source ``send`` so it is audited like any inbound message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from gateway.domain import aggregate, submission
from gateway.domain.addresses import normalise
from gateway.domain.identity import SenderIdentity
from gateway.domain.model import Decision, Outcome, StoredObject
from gateway.services.intake import message_id_of
from gateway.services.processor import PartResult, Processor
from gateway.services.queries import message_detail
from gateway.store import journal, scheduling
from gateway.store.facade import Store
from gateway.store.tx import Tx

__all__ = ["GatewayServices"]

log = logging.getLogger(__name__)


class GatewayServices:
    """The store and processor, opened for one CLI command."""

    def __init__(self, store: Store, processor: Processor, clock: Callable[[], datetime]) -> None:
        self.store = store
        self.processor = processor
        self.clock = clock

    def __enter__(self) -> GatewayServices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # --- ingest ---------------------------------------------------------------------

    def ingest_now(
        self,
        raw: bytes,
        *,
        recipients: list[str],
        sender: str = "",
        source: journal.Source = "ingest",
    ) -> tuple[int, bool, list[dict[str, Any]]]:
        """Journal ``raw`` then process it at once; returns (journal id, duplicate, outcomes)."""
        now = self.clock()
        row, duplicate = self.store.run_sync(
            journal.record_inbound,
            raw,
            message_id=message_id_of(raw),
            source=source,
            envelope_from=sender,
            envelope_to=[normalise(r) for r in recipients],
            now=now,
        )
        journal_id = row.id
        results: list[PartResult] | None = None
        if not duplicate:
            try:
                results = self.store.run_sync(self.processor.process_now, journal_id, self.clock())
            except Exception as exc:
                # The message is durable in the journal: report the failure and leave the
                # row to the daemon's retries (quarantined after max_attempts) rather than
                # making the MTA deliver it again.
                log.exception("processing journal row %s failed", journal_id)
                error = f"{type(exc).__name__}: {exc}"
                quarantined = self.store.run_sync(self.processor.fail_row, journal_id, error, now)
                state = "quarantined" if quarantined else "journaled; the daemon retries it"
                return (
                    journal_id,
                    duplicate,
                    [
                        {
                            "part": 0,
                            "recipient": "",
                            "method": "",
                            "component": "",
                            "uid": "",
                            "recurrence_id": "",
                            "outcome": "processing-failed",
                            "reason": f"{error} ({state})",
                        }
                    ],
                )
        if results is not None:
            return journal_id, duplicate, [r.as_dict() for r in results]
        detail = self.store.read_sync(message_detail, journal_id)
        outcomes: list[dict[str, Any]] = list(detail["outcomes"]) if detail else []
        return journal_id, duplicate, outcomes

    def send(self, ics: bytes) -> tuple[int, list[dict[str, Any]]]:
        """An organiser's submission (``imip-gateway send FILE.ics``)."""
        journal_id, _dup, outcomes = self.ingest_now(ics, recipients=[], source="send")
        return journal_id, outcomes

    # --- COUNTER decisions (RFC 5546 section 3.2.7) -----------------------------------

    def counter(
        self, uid: str, owner: str, held_id: int | None, *, accept: bool, comment: str = ""
    ) -> Decision:
        """Accept (new REQUEST) or decline (DECLINECOUNTER) a pending COUNTER proposal."""
        return self.store.run_sync(self._counter, uid, owner, held_id, accept, comment)

    def _counter(
        self, s: Tx, uid: str, owner: str, held_id: int | None, accept: bool, comment: str
    ) -> Decision:
        user = self.processor.directory.local_user(owner)
        if user is None:
            return Decision(Outcome.IGNORED_NOT_LOCAL, f"{owner} is not a configured local user")
        stored, object_id = scheduling.load(s, user.address, uid, with_held=True)
        if stored is None:
            return Decision(Outcome.IGNORED_UNKNOWN, f"{user.address} has no event {uid!r}")
        counters = [h for h in stored.held if h.kind == "counter"]
        if held_id is not None:
            counters = [h for h in counters if h.id == held_id]
        if not counters:
            return Decision(Outcome.IGNORED_UNKNOWN, "no pending COUNTER proposal for this event")
        if len(counters) > 1 and held_id is None:
            ids = ", ".join(str(h.id) for h in counters)
            return Decision(
                Outcome.IGNORED_POLICY, f"several proposals are pending ({ids}): name one with --id"
            )
        now = self.clock()
        ctx = self.processor.context(
            user, SenderIdentity(from_addresses=(user.address,), local_submission=True), now
        )
        if accept:
            decision = submission.counter_accept(stored, counters[0], ctx)
        else:
            decision = submission.counter_decline(stored, counters[0], ctx, comment)
        self.processor.apply_decision(s, user, uid, object_id, decision, now)
        return decision

    # --- aggregation ------------------------------------------------------------------

    def aggregate(self, stored: StoredObject) -> dict[str, Any]:
        """The organiser's reply aggregation as JSON-ready values."""
        return aggregate.aggregate(stored).to_dict()
