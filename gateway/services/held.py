"""Operator decisions on held items (``imip-gateway held list|accept|discard``).

The engine sets messages aside instead of dropping them (ARCHITECTURE.md section 3):
a REPLY from an uninvited party crasher under the "hold" policy (RFC 5546 3.2.2.6,
4.2.8), a REPLY or CANCEL that arrived before its REQUEST (5.2.1), a reply from an
unknown delegate (5.2.2), a COUNTER proposal (3.2.7), an ORGANIZER change (6.1.3).
The ones that can be re-run are released automatically when their object appears;
this module lets an operator see all of them and decide:

* ``accept`` - a party crasher's REPLY is applied as if the owner's policy were
  "accept" (the attendee is added with their answer); an early reply/cancel/add or
  an unknown delegate's reply is re-run through the engine now that its object
  exists.  The decision is applied like any other: state, outbox rows and the held
  item's resolution in ONE transaction, and an outcome is added to the journal row
  the message came in with, so ``messages show`` tells the whole story.
* ``discard`` - resolve the item without applying it (the reason is recorded).

COUNTER proposals are answered with ``imip-gateway counter accept|decline``; an
ORGANIZER change needs the user, not an operator, so both are refused here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from gateway.domain import engine
from gateway.domain.identity import SenderIdentity
from gateway.domain.message import parse_itip
from gateway.domain.model import Outcome, ResolveHeld
from gateway.services.runtime import GatewayServices
from gateway.store import held, journal, scheduling
from gateway.store.models import HeldRow
from gateway.store.tx import Tx

__all__ = ["NOT_ACCEPTABLE", "RERUN_KINDS", "HeldResult", "HeldService"]

#: Kinds an operator's accept re-runs through the engine unchanged (their object may
#: have appeared since, or the automatic release did not fire).
RERUN_KINDS = frozenset({"early-reply", "early-cancel", "early-add", "unknown-delegate"})
#: Kinds answered elsewhere: why ``accept`` refuses them.
NOT_ACCEPTABLE = {
    "counter": "a COUNTER proposal is answered with `imip-gateway counter accept|decline`",
    "organizer-change": "an ORGANIZER change (RFC 5546 6.1.3) needs the calendar user's "
    "consent; discard it or let the user re-import the invitation",
}


@dataclass(frozen=True)
class HeldResult:
    """What an operator command did to one held item."""

    held_id: int
    outcome: str  # an Outcome value, or "not-found" / "refused" / "resolved"
    reason: str
    queued: tuple[str, ...] = field(default_factory=tuple)  # "METHOD to address"

    @property
    def resolved(self) -> bool:
        """True when the item is closed (applied, recorded, ignored or discarded)."""
        return self.outcome not in ("not-found", "refused", Outcome.HELD_PENDING.value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.held_id,
            "outcome": self.outcome,
            "reason": self.reason,
            "queued": list(self.queued),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _row_json(row: HeldRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "owner": row.owner,
        "uid": row.uid,
        "kind": row.kind,
        "method": row.method,
        "sender": row.sender,
        "recurrence_id": row.instance_key or None,
        "sequence": row.sequence,
        "dtstamp": _iso(row.dtstamp),
        "journal_id": row.journal_id,
        "created_at": _iso(row.created_at),
        "resolved_at": _iso(row.resolved_at),
        "resolution": row.resolution,
    }


class HeldService:
    """Held-item use cases on an open :class:`GatewayServices`."""

    def __init__(self, services: GatewayServices) -> None:
        self.services = services

    # --- listing ------------------------------------------------------------------------

    def list(
        self, owner: str | None = None, *, include_resolved: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Held items, oldest first (unresolved only unless ``include_resolved``)."""

        def read(s: Tx) -> list[dict[str, Any]]:
            rows = held.list_held(s, owner, include_resolved=include_resolved, limit=limit)
            return [_row_json(r) for r in rows]

        return self.services.store.read_sync(read)

    # --- decisions ----------------------------------------------------------------------

    def accept(self, held_id: int) -> HeldResult:
        """Apply a held item (see the module docstring for what each kind means)."""
        return self.services.store.run_sync(self._accept, held_id)

    def discard(self, held_id: int, reason: str = "") -> HeldResult:
        """Resolve a held item without applying it."""
        return self.services.store.run_sync(self._discard, held_id, reason)

    def _pending(self, s: Tx, held_id: int) -> HeldRow | HeldResult:
        row = held.get(s, held_id)
        if row is None:
            return HeldResult(held_id, "not-found", f"no held item #{held_id}")
        if row.resolved_at is not None:
            return HeldResult(
                held_id,
                "refused",
                f"held item #{held_id} was already resolved: {row.resolution or 'no reason'}",
            )
        return row

    def _discard(self, s: Tx, held_id: int, reason: str) -> HeldResult:
        row = self._pending(s, held_id)
        if isinstance(row, HeldResult):
            return row
        now = self.services.clock()
        resolution = "discarded by operator" + (f": {reason}" if reason else "")
        held.resolve(s, row.id, resolution[:2000], now)
        text = f"held {row.kind} #{row.id} from {row.sender} {resolution}"
        self._journal(s, row, "resolved", text, now)
        return HeldResult(held_id, "resolved", text)

    def _accept(self, s: Tx, held_id: int) -> HeldResult:
        row = self._pending(s, held_id)
        if isinstance(row, HeldResult):
            return row
        if row.kind in NOT_ACCEPTABLE:
            return HeldResult(held_id, "refused", NOT_ACCEPTABLE[row.kind])
        if row.kind != "party-crasher" and row.kind not in RERUN_KINDS:
            return HeldResult(
                held_id, "refused", f"held items of kind {row.kind!r} cannot be accepted"
            )
        processor = self.services.processor
        user = processor.directory.local_user(row.owner)
        if user is None:
            return HeldResult(held_id, "refused", f"{row.owner} is no longer a local user")
        parsed = parse_itip(row.payload)
        msgs = [m for m in parsed.messages if m.uid == row.uid]
        if not msgs:
            problems = "; ".join(parsed.problems) or "no message for this UID"
            return HeldResult(held_id, "refused", f"the held payload does not parse: {problems}")
        msg = msgs[0]
        now = self.services.clock()
        if row.kind == "party-crasher":
            # The operator takes the owner's place: policy "accept" for this one reply
            # (RFC 5546 3.2.2.6 leaves the organiser free to accept the party crasher).
            user = replace(user, party_crashers="accept")
        # The sender was checked against the message's transport identity when it was
        # held; the engine now authorises against that recorded address.
        ctx = processor.context(user, SenderIdentity(from_addresses=(row.sender,)), now)
        plan = engine.load_plan(msg, user.address)
        stored, object_id = scheduling.load(
            s, user.address, row.uid, addresses=plan.attendee_addresses, with_held=plan.held
        )
        if stored is None and row.kind in RERUN_KINDS:
            return HeldResult(
                held_id,
                Outcome.HELD_PENDING.value,
                f"{row.owner} still has no copy of UID {row.uid!r}; the {row.kind} stays held "
                "(RFC 5546 5.2.1)",
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
        if decision.outcome == Outcome.HELD_PENDING:
            return HeldResult(
                held_id,
                decision.outcome.value,
                f"still cannot be applied, kept held: {decision.reason}",
            )
        resolution = f"accepted by operator: {decision.outcome.value}"
        decision = replace(
            decision, changes=[*decision.changes, ResolveHeld(row.id, resolution)], hold=[]
        )
        processor.apply_decision(s, user, row.uid, object_id, decision, now)
        text = f"held {row.kind} #{row.id} from {row.sender} accepted by operator: " + (
            decision.reason
        )
        self._journal(s, row, decision.outcome.value, text, now)
        queued = tuple(f"{o.method} to {r}" for o in decision.outgoing for r in o.recipients)
        return HeldResult(held_id, decision.outcome.value, text, queued)

    def _journal(self, s: Tx, row: HeldRow, outcome: str, reason: str, now: datetime) -> None:
        """Add the operator's decision to the journal row the message came in with."""
        if row.journal_id is None:
            return
        journal.add_outcome(
            s,
            row.journal_id,
            part_index=-1,
            recipient=row.owner,
            outcome=outcome,
            reason=reason[:2000],
            now=now,
            method=row.method,
            uid=row.uid,
            recurrence_id=row.instance_key or None,
        )
