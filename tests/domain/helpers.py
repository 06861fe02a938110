"""Shared helpers for the domain tests: build messages, stored objects and contexts.

Both engine sides append here; each section is owned by its author.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime

from gateway.domain.addresses import normalise
from gateway.domain.apply import apply_changes
from gateway.domain.ical import Component, parse_one
from gateway.domain.identity import AuthVerdict, SenderIdentity
from gateway.domain.message import parse_itip
from gateway.domain.model import (
    BookingRules,
    BusyPeriod,
    Context,
    Decision,
    ITipMessage,
    ObjectHeader,
    Role,
    StoredObject,
    UserPolicy,
)
from gateway.domain.state import dtstamp_of, sequence_of, split_component
from gateway.domain.timeutil import TzResolver

ORG_NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


# --- organiser-side helpers (imip-gateway organiser engine) ----------------------------


def org_calendar(text: str) -> Component:
    """Parse an indented iCalendar example (RFC 5546 section 4 layout) into a VCALENDAR."""
    return parse_one(textwrap.dedent(text).strip() + "\n")


def org_message(text: str) -> ITipMessage:
    """The single iTIP message in ``text``."""
    result = parse_itip(textwrap.dedent(text).strip() + "\n")
    assert not result.problems, result.problems
    assert len(result.messages) == 1
    return result.messages[0]


def org_stored(
    text: str, owner: str = "a@example.com", role: Role = Role.ORGANIZER
) -> StoredObject:
    """The owner's stored copy of the event in ``text`` (rows split as the store keeps them)."""
    cal = org_calendar(text)
    resolver = TzResolver.for_calendar(cal)
    comps = [c for c in cal.components if c.name in ("VEVENT", "VTODO", "VJOURNAL")]
    master = next((c for c in comps if c.get("RECURRENCE-ID") is None), comps[0])
    stored = StoredObject(
        header=ObjectHeader(
            owner=owner,
            uid=master.value("UID") or "",
            component_type=master.name,
            role=role,
            organizer=normalise(master.value("ORGANIZER")),
            sequence=sequence_of(master),
            dtstamp=dtstamp_of(master, resolver),
            status=(master.value("STATUS") or "").upper(),
            summary=master.text("SUMMARY"),
            is_recurring=master.get("RRULE") is not None or master.get("RDATE") is not None,
            timezones=[z.copy() for z in cal.sub("VTIMEZONE")],
        )
    )
    for comp in comps:
        inst, rows = split_component(comp, resolver)
        stored.instances[inst.key] = inst
        for row in rows:
            stored.attendees[(row.instance_key, row.address)] = row
    return stored


def org_context(
    owner: str = "a@example.com",
    sender: str | tuple[str, ...] = (),
    *,
    local: bool = False,
    party_crashers: str = "hold",
    dmarc: AuthVerdict = AuthVerdict.NONE,
    now: datetime = ORG_NOW,
) -> Context:
    """A context for the local organiser ``owner``, the mail coming from ``sender``."""
    senders = (sender,) if isinstance(sender, str) else sender
    return Context(
        owner=UserPolicy(address=owner, party_crashers=party_crashers),
        sender=SenderIdentity(from_addresses=tuple(senders), local_submission=local, dmarc=dmarc),
        now=now,
    )


def org_apply(stored: StoredObject | None, decision: Decision) -> StoredObject:
    """The stored object after ``decision`` (as the service would commit it)."""
    after = apply_changes(stored, decision.changes)
    assert after is not None
    return after


# --- attendee-side helpers (imip-gateway attendee engine) ------------------------------

# The RFC 5546 section 4 examples live in 1997; "now" sits just before them.
ATT_NOW = datetime(1997, 6, 15, 12, 0, tzinfo=UTC)


def att_context(
    owner: str = "b@example.com",
    sender: str | tuple[str, ...] = "a@example.com",
    *,
    policy: str = "manual",
    kind: str = "person",
    booking: BookingRules | None = None,
    busy: tuple[BusyPeriod, ...] = (),
    now: datetime = ATT_NOW,
    local: bool = False,
    dmarc: AuthVerdict = AuthVerdict.NONE,
    max_instances: int = 1000,
    max_attendees: int = 2000,
) -> Context:
    """A context for the local attendee ``owner``; the mail comes from ``sender``."""
    senders = (sender,) if isinstance(sender, str) else sender
    return Context(
        owner=UserPolicy(address=owner, kind=kind, policy=policy, booking=booking),
        sender=SenderIdentity(from_addresses=senders, local_submission=local, dmarc=dmarc),
        now=now,
        busy=busy,
        max_instances=max_instances,
        max_attendees=max_attendees,
    )


def att_process(
    text: str, stored: StoredObject | None, ctx: Context
) -> tuple[Decision, StoredObject | None]:
    """Run one message through the engine; return the decision and the state after it."""
    from gateway.domain import engine

    decision = engine.process(org_message(text), stored, ctx)
    return decision, apply_changes(stored, decision.changes)


def att_steps(ctx: Context, *texts: str) -> tuple[list[Decision], StoredObject | None]:
    """Apply several messages in order, as the service would, and return the end state."""
    stored: StoredObject | None = None
    decisions: list[Decision] = []
    for text in texts:
        decision, stored = att_process(text, stored, ctx)
        decisions.append(decision)
    return decisions, stored


def att_partstat(stored: StoredObject | None, address: str, key: str = "") -> str:
    """The stored PARTSTAT of ``address`` for instance ``key``."""
    assert stored is not None
    return stored.attendees[(key, address)].partstat


def att_reply_lines(decision: Decision, name: str) -> list[str]:
    """The values of property ``name`` in every component of every outgoing message."""
    out: list[str] = []
    for message in decision.outgoing:
        for comp in message.calendar.components:
            out.extend(p.to_line() for p in comp.get_all(name))
    return out
