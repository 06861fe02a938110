"""Auto-processing policies: what PARTSTAT the gateway answers for a local user.

Issue 3: people have a policy (manual, accept, decline, tentative, accept-if-free);
rooms and resources (RFC 5545 CUTYPE=ROOM/RESOURCE) have booking rules (window,
maximum duration, recurring allowed, series conflict allowance, allowed organisers).
The outcome is a PARTSTAT (RFC 5545 3.2.12) and a human reason that goes into the
REPLY's COMMENT and the journal; ``None`` means "leave it to the user" (manual).

Conflicts are computed against the owner's busy periods (``Context.busy``, loaded by
the service for :func:`gateway.domain.attendee.busy_window`) with bounded recurrence
expansion (:mod:`gateway.domain.recurrence`), never against the object itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.domain.addresses import domain_of, normalise
from gateway.domain.ical import Component
from gateway.domain.model import BookingRules, Context
from gateway.domain.recurrence import Occurrence, is_recurring, occurrences, overlapping
from gateway.domain.timeutil import TzResolver, instance_key, to_utc

__all__ = ["PolicyDecision", "decide", "instances_of"]

PERSON_POLICIES = {"accept": "ACCEPTED", "decline": "DECLINED", "tentative": "TENTATIVE"}


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """PARTSTAT to answer (None: the user decides) and why."""

    partstat: str | None
    reason: str
    conflicts: int = 0
    instances: int = 0
    # Series accepted within the conflict allowance: the instances (keys) that are
    # declined one by one (issue 3; RFC 5546 3.7.1 per-instance participation).
    declined_instances: tuple[str, ...] = ()


def instances_of(
    components: Sequence[Component],
    resolver: TzResolver,
    window: tuple[datetime, datetime],
    limit: int,
) -> list[Occurrence]:
    """The instances a message asks for: master expansion with overrides replacing
    the instance they name, cancelled overrides left out (RFC 5546 section 3.7.1)."""
    masters = [c for c in components if c.get("RECURRENCE-ID") is None]
    overrides = [c for c in components if c.get("RECURRENCE-ID") is not None]
    out: dict[str, Occurrence] = {}
    for master in masters[:1]:
        for occ in occurrences(master, resolver, window[0], window[1], limit):
            out[occ.key] = occ
    for comp in overrides:
        rid = comp.get("RECURRENCE-ID")
        if rid is None:
            continue
        try:
            key = instance_key(resolver.value(rid))
        except ValueError:
            continue
        out.pop(key, None)
        if (comp.value("STATUS") or "").upper() == "CANCELLED":
            continue
        found = occurrences(comp, resolver, window[0], window[1], 1)
        if found:
            out[key] = Occurrence(key, found[0].start, found[0].end)
    return sorted(out.values(), key=lambda o: o.start)[:limit]


def _window(ctx: Context) -> tuple[datetime, datetime]:
    return ctx.now - timedelta(days=1), ctx.now + timedelta(days=400)


def _conflicts(occs: Sequence[Occurrence], ctx: Context, uid: str) -> int:
    return len(overlapping(((o.start, o.end) for o in occs), ctx.busy, ignore_uid=uid))


def _conflicting(occs: Sequence[Occurrence], ctx: Context, uid: str) -> list[Occurrence]:
    """The instances that overlap the owner's busy time (other objects only)."""
    return [o for o in occs if overlapping([(o.start, o.end)], ctx.busy, ignore_uid=uid)]


def _allowed_organizer(organizer: str, allowed: Sequence[str]) -> bool:
    if not allowed:
        return True
    addr = normalise(organizer)
    for entry in allowed:
        entry = entry.strip().lower()
        if entry.startswith("@"):
            if domain_of(addr) == entry[1:]:
                return True
        elif normalise(entry) == addr:
            return True
    return False


def _minutes(delta: timedelta) -> int:
    return int(delta.total_seconds() // 60)


def decide(
    components: Sequence[Component],
    resolver: TzResolver,
    ctx: Context,
    *,
    organizer: str,
    uid: str,
) -> PolicyDecision:
    """Apply the owner's policy (or booking rules) to the requested instances."""
    owner = ctx.owner
    window = _window(ctx)
    if owner.kind != "person":
        if owner.booking is None and owner.policy == "manual":
            return PolicyDecision(None, "stored for the resource's manager (manual policy)")
        return _book(components, resolver, ctx, owner.booking or BookingRules(), organizer, uid)
    if owner.policy in PERSON_POLICIES:
        partstat = PERSON_POLICIES[owner.policy]
        return PolicyDecision(partstat, f"automatic {partstat.lower()} (policy {owner.policy})")
    if owner.policy == "accept-if-free":
        if not _occupies_time(components):
            return PolicyDecision("ACCEPTED", "accepted: to-dos do not occupy time")
        occs = instances_of(components, resolver, window, ctx.max_instances)
        if not occs:
            return PolicyDecision("ACCEPTED", "accepted: no instance in the next 400 days")
        busy = _conflicts(occs, ctx, uid)
        if busy:
            return PolicyDecision(
                "DECLINED", _conflict_text(busy, len(occs)), conflicts=busy, instances=len(occs)
            )
        return PolicyDecision("ACCEPTED", "accepted: the time is free", instances=len(occs))
    return PolicyDecision(None, "stored for the user")


def _occupies_time(components: Sequence[Component]) -> bool:
    """Only events block time; a VTODO's DTSTART..DUE is a deadline, not a meeting
    (RFC 5545 3.6.4: free/busy is computed from VEVENTs)."""
    return any(c.name == "VEVENT" for c in components)


def _conflict_text(busy: int, total: int) -> str:
    if total == 1:
        return "conflicts with another event"
    return f"conflicts with {busy} of {total} instances"


def _book(
    components: Sequence[Component],
    resolver: TzResolver,
    ctx: Context,
    rules: BookingRules,
    organizer: str,
    uid: str,
) -> PolicyDecision:
    """Booking rules for rooms and resources, checked cheapest first."""
    if not _allowed_organizer(organizer, rules.allowed_organizers):
        return PolicyDecision("DECLINED", f"{normalise(organizer)} may not book this resource")
    recurring = any(is_recurring(c) for c in components)
    if recurring and not rules.allow_recurring:
        return PolicyDecision("DECLINED", "recurring bookings are not allowed")
    if not _occupies_time(components):
        return PolicyDecision("ACCEPTED", "accepted: to-dos do not occupy time")
    occs = instances_of(components, resolver, _window(ctx), ctx.max_instances)
    if rules.max_duration_minutes:
        for occ in occs:
            length = _minutes(occ.end - occ.start)
            if length > rules.max_duration_minutes:
                return PolicyDecision(
                    "DECLINED",
                    f"lasts {length} minutes, longer than the "
                    f"{rules.max_duration_minutes}-minute maximum",
                )
    if rules.window_days:
        limit = ctx.now + timedelta(days=rules.window_days)
        first = _first_start(components, resolver)
        if first is not None and first > limit:
            return PolicyDecision("DECLINED", f"outside the {rules.window_days}-day booking window")
    if not occs:
        return PolicyDecision("ACCEPTED", "accepted: no instance in the next 400 days")
    clashes = _conflicting(occs, ctx, uid)
    busy = len(clashes)
    total = len(occs)
    if busy:
        within_count = busy <= rules.max_conflicting_instances
        within_share = busy * 100.0 / total <= rules.max_conflict_percent
        if not (within_count or within_share) or total == 1:
            reason = _conflict_text(busy, total)
            if total > 1:
                reason += f" ({_allowance_text(rules)})"
            return PolicyDecision("DECLINED", reason, conflicts=busy, instances=total)
        # Within the allowance: the series is accepted and each conflicting instance
        # declined on its own, so the organiser knows which dates need another room.
        return PolicyDecision(
            "ACCEPTED",
            f"accepted; {busy} of {total} instances conflict ({_allowance_text(rules)}) "
            "and are declined individually",
            conflicts=busy,
            instances=total,
            declined_instances=tuple(o.key for o in clashes),
        )
    return PolicyDecision("ACCEPTED", "accepted: the resource is free", instances=total)


def _allowance_text(rules: BookingRules) -> str:
    parts: list[str] = []
    if rules.max_conflicting_instances:
        parts.append(f"{rules.max_conflicting_instances} instance(s)")
    if rules.max_conflict_percent:
        parts.append(f"{rules.max_conflict_percent:g}%")
    if not parts:
        return "no conflicting instance allowed"
    return "allowed: at most " + " or ".join(parts)


def _first_start(components: Sequence[Component], resolver: TzResolver) -> datetime | None:
    starts: list[datetime] = []
    for comp in components:
        prop = comp.get("DTSTART")
        if prop is None:
            continue
        try:
            starts.append(to_utc(resolver.value(prop)))
        except ValueError:
            continue
    return min(starts) if starts else None
