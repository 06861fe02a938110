"""Organiser-side iTIP processing: REPLY, REFRESH and COUNTER (RFC 5546 section 3.2).

The gateway acts as the calendar agent of a local organiser.  Everything here is pure:
the service loads the rows :func:`load_plan` asks for, :func:`process` returns a
:class:`~gateway.domain.model.Decision`, the service applies it in one transaction.

REPLY (section 3.2.3)
    Ordered **per attendee and per instance** (section 2.1.5 rules 3-4): a REPLY not
    newer than the one already applied for that attendee and instance (lower
    SEQUENCE, or equal SEQUENCE and older DTSTAMP) is stale, an identical one a
    duplicate; a REPLY whose SEQUENCE is lower than the instance's current SEQUENCE
    answers an outdated revision (section 2.1.4) and is stale too.  Applying a reply
    changes the replying attendee's row only (issue 3 performance note) - the event
    text is never re-rendered.  A reply for one instance never touches the series:
    when the instance has no override yet one is derived from the master (section
    3.7.1).  A series reply also updates that attendee's override rows that hold no
    newer instance-specific reply, so replies applied in any order converge.
    At equal SEQUENCE and DTSTAMP an instance-specific answer outranks the series
    answer (one REPLY carrying a master and an override has one DTSTAMP), which keeps
    the result independent of the order of arrival (property-tested).
    ``RANGE=THISANDFUTURE`` marks a newly derived override as covering later
    instances and updates the attendee's later overrides.

    Interop: an Outlook REPLY without ORGANIZER takes the stored one (warning); a
    REPLY naming several attendees (section 3.2.3 allows one) uses the one matching
    the sender (warning).

    Authorisation (section 6.1.2): the replying attendee or its SENT-BY must be among
    the transport identities (:meth:`SenderIdentity.claimed`) unless the message was
    submitted locally; a trusted DMARC failure refuses.

    Unknown UID (section 5.2.1): the first REPLY for a UID the organiser's copy does
    not know yet is held (``early-reply``) until a submission creates the object
    (:mod:`gateway.domain.submission` then asks for the release).

    Delegation (sections 2.1.2, 3.2.2.3, 4.2.5-4.2.7): the delegator's REPLY with
    PARTSTAT=DELEGATED adds each delegate (DELEGATED-FROM, RSVP=TRUE) and the
    organiser sends each new delegate the event as a REQUEST (SEQUENCE unchanged,
    section 2.1.4).  When a delegate declines, the organiser re-sends the REQUEST to
    the delegator (section 4.2.5: MUST).  A REPLY from a delegate whose delegator's
    REPLY has not arrived is **accepted** and the delegate added (section 5.2.2 leaves
    the choice; accepting keeps the answer, and the delegator's REPLY completes the
    picture whenever it comes).  Re-delegation (4.2.5: "the original delegate [may]
    delegate the meeting to someone else"): when a delegator's new REPLY names other
    delegates, an earlier delegate holding the seat only through that delegator is
    removed and sent a CANCEL naming them (3.2.5), the new one gets the REQUEST.

    VTODO progress (3.4.3, example 4.5.4): PERCENT-COMPLETE of a REPLY is kept on the
    replying attendee's row (:func:`gateway.domain.state.percent_complete`).

    Party crashers (sections 3.2.2.6, 4.2.8): per the owner's policy "accept" (added
    with the received line; no REQUEST is sent since they already hold the forwarded
    one), "ignore" or "hold".  Group members (section 3.7.2): a REPLY whose ATTENDEE
    carries MEMBER naming an invited CUTYPE=GROUP/UNKNOWN attendee adds that member as
    an individual attendee.

REFRESH (sections 3.2.6, 6.1.6)
    Answered with the current REQUEST rendered from the rows, only to attendees of
    the event; anyone else gets nothing (rejected, with the reason).

COUNTER (section 3.2.7)
    Recorded as a held proposal (kind ``counter``) for the organiser to accept or
    decline (:func:`gateway.domain.submission.counter_accept` /
    :func:`~gateway.domain.submission.counter_decline`); an older pending proposal
    from the same attendee for the same instance is superseded.

Row loading (:func:`load_plan`): a series REPLY loads only the rows of the addresses
the message names (the replier, its delegates/delegators, its group).  All rows are
loaded when the REPLY carries a RECURRENCE-ID (a new override needs the full attendee
list), delegates a meeting (the delegate gets a full REQUEST) or is a delegate's
DECLINED (the delegator gets a full REQUEST), and for REFRESH.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from gateway.domain.addresses import normalise, to_uri
from gateway.domain.apply import apply_changes
from gateway.domain.derive import derive_instance, key_to_value
from gateway.domain.ical import Component, Property, escape_text, serialize
from gateway.domain.identity import AuthVerdict
from gateway.domain.model import (
    AttendeeState,
    Change,
    Context,
    Decision,
    DeleteAttendee,
    HoldRequest,
    ITipMessage,
    Method,
    Outcome,
    OutgoingMessage,
    PutAttendee,
    PutInstance,
    ResolveHeld,
    Role,
    StoredObject,
)
from gateway.domain.state import (
    attendee_from_prop,
    attendees_of,
    compare_versions,
    dtstamp_of,
    instance_key_of,
    render_calendar,
    render_component,
    sequence_of,
    with_percent_complete,
)
from gateway.domain.timeutil import TzResolver, format_utc, to_utc

if TYPE_CHECKING:
    from gateway.domain.engine import LoadPlan

__all__ = [
    "compact",
    "itip_payload",
    "load_plan",
    "owner_addresses",
    "process",
    "render_request",
    "stored_resolver",
]

_GROUP_TYPES = frozenset({"GROUP", "UNKNOWN"})
_VERDICT_TEXT = {"duplicate": "a duplicate of", "stale": "older than"}


# --- shared helpers (also used by submission and aggregate) ---------------------------


def owner_addresses(ctx: Context) -> frozenset[str]:
    """The owner's normalised address and aliases."""
    return frozenset(normalise(a) for a in (ctx.owner.address, *ctx.owner.aliases) if a)


def stored_resolver(stored: StoredObject, extra: Component | None = None) -> TzResolver:
    """A resolver knowing the stored VTIMEZONEs (and those of ``extra``, a VCALENDAR)."""
    zones: dict[str, Component] = {}
    for vtz in stored.header.timezones:
        tzid = (vtz.value("TZID") or "").strip()
        if tzid:
            zones[tzid] = vtz
    if extra is not None:
        for vtz in extra.sub("VTIMEZONE"):
            tzid = (vtz.value("TZID") or "").strip()
            if tzid:
                zones.setdefault(tzid, vtz)
    return TzResolver(vtimezones=zones)


def itip_payload(msg: ITipMessage) -> str:
    """The iCalendar text of one message (this UID only), for held items."""
    cal = Component("VCALENDAR", [p.copy() for p in msg.calendar.properties])
    cal.components = [c.copy() for c in msg.timezones] + [c.copy() for c in msg.components]
    return serialize(cal)


def render_request(
    stored: StoredObject,
    ctx: Context,
    keys: Iterable[str] | None = None,
    *,
    method: str = Method.REQUEST,
    comment: str = "",
) -> Component:
    """A VCALENDAR (``method``) rendered from the rows: master first, then overrides.

    ``keys`` restricts the components (e.g. one instance); DTSTAMP is the time the
    message is created (RFC 5545 section 3.8.7.2) and SEQUENCE the stored one.
    """
    wanted = list(keys) if keys is not None else _instance_order(stored)
    comps: list[Component] = []
    for key in wanted:
        inst = stored.instances.get(key)
        if inst is None:
            continue
        comp = render_component(inst, attendees_of(stored.attendees, key))
        comp.set("DTSTAMP", format_utc(ctx.now))
        comp.set("SEQUENCE", str(inst.sequence))
        if comment:
            comp.add(Property("COMMENT", escape_text(comment)))
        comps.append(comp)
    return render_calendar(stored.header, method, comps, prodid=ctx.prodid)


def _instance_order(stored: StoredObject) -> list[str]:
    return sorted(stored.instances, key=lambda k: (k != "", k))


# --- load plan ----------------------------------------------------------------------


def load_plan(msg: ITipMessage, owner: str) -> LoadPlan:
    """Which rows :func:`process` needs (see the module docstring)."""
    from gateway.domain.engine import LoadPlan

    if msg.method == Method.REFRESH:
        return LoadPlan(attendee_addresses=None)
    if msg.method == Method.COUNTER:
        return LoadPlan(attendee_addresses=_named_addresses(msg), held=True)
    for comp in msg.components:
        if comp.get("RECURRENCE-ID") is not None:
            return LoadPlan(attendee_addresses=None)
        for prop in comp.get_all("ATTENDEE"):
            partstat = (prop.param("PARTSTAT") or "").upper()
            if prop.param_list("DELEGATED-TO") and partstat == "DELEGATED":
                return LoadPlan(attendee_addresses=None)
            if prop.param_list("DELEGATED-FROM") and partstat == "DECLINED":
                return LoadPlan(attendee_addresses=None)
    return LoadPlan(attendee_addresses=_named_addresses(msg))


def _named_addresses(msg: ITipMessage) -> frozenset[str]:
    out: set[str] = set()
    for comp in msg.components:
        for prop in comp.get_all("ATTENDEE"):
            state = attendee_from_prop(prop, "")
            out.add(state.address)
            out.update(state.delegated_to)
            out.update(state.delegated_from)
            out.update(state.member)
            if state.sent_by:
                out.add(state.sent_by)
    out.discard("")
    return frozenset(out)


# --- entry point --------------------------------------------------------------------


def process(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    """Decide a REPLY, REFRESH or COUNTER addressed to the local organiser."""
    if msg.component_type == "VFREEBUSY":
        # Section 3.3.3: a free/busy REPLY answers a VFREEBUSY REQUEST; the gateway
        # never sends those on a user's behalf, so there is nothing to correlate.
        decision = Decision(
            Outcome.IGNORED_UNSUPPORTED,
            f"VFREEBUSY {msg.method} to {ctx.owner.address}: the gateway does not request "
            "free/busy time, so there is nothing to apply it to (RFC 5546 section 3.3.3)",
        )
    elif msg.method == Method.REPLY:
        decision = _reply(msg, stored, ctx)
    elif msg.method == Method.REFRESH:
        decision = _refresh(msg, stored, ctx)
    elif msg.method == Method.COUNTER:
        decision = _counter(msg, stored, ctx)
    else:
        decision = Decision(
            Outcome.IGNORED_UNSUPPORTED, f"METHOD:{msg.method} is not an organiser method"
        )
    for note in msg.warnings:
        if note not in decision.warnings:
            decision.warnings.insert(0, note)
    return decision


def _validate(msg: ITipMessage, warnings: list[str]) -> Decision | None:
    """Section 3 restriction tables (lenient findings become warnings)."""
    from gateway.domain.validate import validated

    violations = validated(msg, warnings)
    if not violations:
        return None
    text = "; ".join(f"{v.text} [{v.code}]" for v in violations)
    return Decision(Outcome.REJECTED_INVALID, text, warnings=warnings)


def _guard(
    msg: ITipMessage, stored: StoredObject, ctx: Context, warnings: list[str]
) -> Decision | None:
    """Checks common to the three methods once the object is known."""
    if stored.header.role != Role.ORGANIZER:
        return Decision(
            Outcome.IGNORED_POLICY,
            f"{msg.method} for UID {msg.uid!r}: {ctx.owner.address} is an attendee of this "
            "event, not its organiser (RFC 5546 section 3.2: only the organiser processes "
            f"{msg.method})",
            warnings=warnings,
        )
    if msg.component_type != stored.header.component_type:
        return Decision(
            Outcome.REJECTED_INVALID,
            f"{msg.method} carries a {msg.component_type} but UID {msg.uid!r} is a "
            f"{stored.header.component_type}",
            warnings=warnings,
        )
    stored_org = normalise(stored.header.organizer)
    for comp in msg.components:
        org = normalise(comp.value("ORGANIZER"))
        if not org:
            warnings.append(
                f"{msg.method} has no ORGANIZER (Outlook); used the stored organiser {stored_org}"
            )
            break
        if org != stored_org and org not in owner_addresses(ctx):
            warnings.append(
                f"{msg.method} names ORGANIZER {org}, the stored organiser is {stored_org}"
            )
            break
    return None


def _authorise(address: str, sent_by: str, ctx: Context, what: str) -> str | None:
    """None when the transport identity may act for ``address``, else the reason."""
    sender = ctx.sender
    if sender.local_submission:
        return None
    if sender.dmarc == AuthVerdict.FAIL:
        return (
            f"{what} for {address}: the sender's domain failed DMARC (trusted "
            "Authentication-Results); not accepted (RFC 5546 section 6.1.2)"
        )
    claimed = sender.claimed()
    if address in claimed or (sent_by and sent_by in claimed):
        return None
    by = ", ".join(claimed) or "an unidentified sender"
    return (
        f"{what} for {address} was sent by {by}, neither that attendee nor its SENT-BY "
        "(RFC 5546 section 6.1.2)"
    )


def _pick_attendee(
    comp: Component, ctx: Context, method: str, warnings: list[str]
) -> Property | str:
    """The ATTENDEE line of the calendar user the message speaks for, or a reason."""
    lines = [p for p in comp.get_all("ATTENDEE") if normalise(p.value)]
    if not lines:
        return f"{method} names no ATTENDEE (RFC 5546 section 3.2: required)"
    if len(lines) == 1:
        return lines[0]
    owners = owner_addresses(ctx)
    candidates = [p for p in lines if normalise(p.value) not in owners] or lines
    claimed = set(ctx.sender.claimed())
    matching = [
        p
        for p in candidates
        if normalise(p.value) in claimed or normalise(p.param("SENT-BY")) in claimed
    ]
    if len(matching) != 1:
        # A delegate's REPLY repeats the delegator's line (RFC 5546 4.2.6/4.2.7): a
        # DELEGATED line pointing at another line of the message is context.
        named = {normalise(p.value) for p in candidates}
        matching = [
            p
            for p in candidates
            if not (
                (p.param("PARTSTAT") or "").upper() == "DELEGATED"
                and set(attendee_from_prop(p, "").delegated_to) & (named - {normalise(p.value)})
            )
        ]
    if len(matching) == 1:
        if method == Method.REPLY and not any(
            p.param_list("DELEGATED-FROM") or p.param_list("DELEGATED-TO") for p in lines
        ):
            warnings.append(
                f"REPLY names {len(lines)} attendees (RFC 5546 section 3.2.3 allows one); "
                f"used {normalise(matching[0].value)}, the sender"
            )
        return matching[0]
    return f"{method} names {len(lines)} attendees and none of them is identifiable as the sender"


# --- REPLY ----------------------------------------------------------------------------


@dataclass
class _Step:
    """Outcome of one component of a REPLY."""

    status: str  # applied | stale | duplicate
    reason: str
    changes: list[Change] = field(default_factory=list)
    outgoing: list[OutgoingMessage] = field(default_factory=list)


def _reply(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    warnings: list[str] = []
    invalid = _validate(msg, warnings)
    if invalid is not None:
        return invalid
    if stored is None:
        return _early_reply(msg, ctx, warnings)
    guarded = _guard(msg, stored, ctx, warnings)
    if guarded is not None:
        return guarded
    resolver = stored_resolver(stored, msg.calendar)

    picked: list[tuple[Component, Property]] = []
    for comp in msg.components:
        line = _pick_attendee(comp, ctx, Method.REPLY, warnings)
        if isinstance(line, str):
            return Decision(Outcome.REJECTED_INVALID, line, warnings=warnings)
        address = normalise(line.value)
        refused = _authorise(address, normalise(line.param("SENT-BY")), ctx, "REPLY")
        if refused is not None:
            return Decision(Outcome.REJECTED_UNAUTHORISED, refused, warnings=warnings)
        picked.append((comp, line))

    state = stored
    steps: list[_Step] = []
    keys: list[str] = []
    for comp, line in picked:
        try:
            key = instance_key_of(comp, resolver)
        except ValueError as exc:
            return Decision(
                Outcome.REJECTED_INVALID, f"unreadable RECURRENCE-ID: {exc}", warnings=warnings
            )
        keys.append(key)
        result = _reply_component(msg, comp, line, key, state, ctx, resolver, warnings)
        if isinstance(result, Decision):
            return result
        steps.append(result)
        if result.changes:
            applied = apply_changes(state, result.changes)
            assert applied is not None
            state = applied
    warnings.extend(w for w in resolver.warnings if w not in warnings)
    return _combine(steps, keys, warnings)


def compact(changes: list[Change]) -> list[Change]:
    """Drop a PutAttendee that a later PutAttendee of the same row replaces."""
    last: dict[tuple[str, str], int] = {}
    for i, change in enumerate(changes):
        if isinstance(change, PutAttendee):
            last[(change.attendee.instance_key, change.attendee.address)] = i
    return [
        c
        for i, c in enumerate(changes)
        if not isinstance(c, PutAttendee)
        or last[(c.attendee.instance_key, c.attendee.address)] == i
    ]


def _combine(steps: list[_Step], keys: list[str], warnings: list[str]) -> Decision:
    changes = compact([c for s in steps for c in s.changes])
    outgoing = [o for s in steps for o in s.outgoing]
    reason = "; ".join(s.reason for s in steps)
    statuses = {s.status for s in steps}
    if "applied" in statuses:
        outcome = Outcome.APPLIED
    elif statuses == {"duplicate"}:
        outcome = Outcome.DUPLICATE
    else:
        outcome = Outcome.IGNORED_STALE
    return Decision(
        outcome,
        reason,
        changes=changes,
        outgoing=outgoing,
        warnings=warnings,
        recurrence_id=keys[0] if len(keys) == 1 else "",
    )


def _early_reply(msg: ITipMessage, ctx: Context, warnings: list[str]) -> Decision:
    """RFC 5546 section 5.2.1: hold a REPLY for a UID we do not know yet."""
    comp = msg.components[0]
    org = normalise(comp.value("ORGANIZER"))
    if org and org not in owner_addresses(ctx):
        return Decision(
            Outcome.IGNORED_UNKNOWN,
            f"REPLY for unknown UID {msg.uid!r} names ORGANIZER {org}, not the recipient",
            warnings=warnings,
        )
    line = _pick_attendee(comp, ctx, Method.REPLY, warnings)
    if isinstance(line, str):
        return Decision(Outcome.REJECTED_INVALID, line, warnings=warnings)
    address = normalise(line.value)
    refused = _authorise(address, normalise(line.param("SENT-BY")), ctx, "REPLY")
    if refused is not None:
        return Decision(Outcome.REJECTED_UNAUTHORISED, refused, warnings=warnings)
    resolver = TzResolver.for_calendar(msg.calendar)
    try:
        key = instance_key_of(comp, resolver)
    except ValueError:
        key = ""
    hold = HoldRequest(
        kind="early-reply",
        instance_key=key,
        sender=address,
        method=Method.REPLY,
        payload=itip_payload(msg),
        sequence=sequence_of(comp),
        dtstamp=dtstamp_of(comp, resolver),
    )
    return Decision(
        Outcome.HELD_PENDING,
        f"REPLY from {address} for UID {msg.uid!r}, which the organiser's copy does not "
        "know yet: held until it does (RFC 5546 section 5.2.1)",
        hold=[hold],
        warnings=warnings,
        recurrence_id=key,
    )


def _reply_component(
    msg: ITipMessage,
    comp: Component,
    line: Property,
    key: str,
    state: StoredObject,
    ctx: Context,
    resolver: TzResolver,
    warnings: list[str],
) -> _Step | Decision:
    """Apply one component of a REPLY (series or one instance)."""
    address = normalise(line.value)
    seq = sequence_of(comp, warnings)
    stamp = dtstamp_of(comp, resolver, warnings)
    where = "series" if key == "" else f"instance {key}"
    this_and_future = (
        key != ""
        and ((comp.get("RECURRENCE-ID") or Property("X", "")).param("RANGE") or "").upper()
        == "THISANDFUTURE"
    )

    changes: list[Change] = []
    base = state
    inst = state.instances.get(key)
    if inst is None and key:
        # A reply for an instance without override: derive one (section 3.7.1).
        master = state.instances.get("")
        if master is None:
            return Decision(
                Outcome.REJECTED_INVALID,
                f"REPLY for {where} but the stored object has no master component",
                warnings=warnings,
            )
        problem = _instance_problem(master.component, key, resolver, ctx)
        if problem is not None:
            return Decision(problem[0], problem[1], warnings=warnings, recurrence_id=key)
        if not state.attendees_complete:
            # load_plan asks for every row when a REPLY has a RECURRENCE-ID; an
            # override built from a partial list would silently drop attendees.
            raise ValueError("REPLY for a new instance needs all attendee rows (load_plan)")
        inst = derive_instance(master, key, resolver, this_and_future=this_and_future)
        changes.append(PutInstance(inst))
        for master_row in attendees_of(state.attendees, ""):
            changes.append(PutAttendee(replace(master_row, instance_key=key)))
        derived = apply_changes(state, changes)
        assert derived is not None
        base = derived
    if inst is None:
        return Decision(
            Outcome.REJECTED_INVALID,
            "REPLY for the series but the stored object has no master component",
            warnings=warnings,
        )

    if seq < inst.sequence:
        return _Step(
            "stale",
            f"REPLY from {address} for the {where} answers SEQUENCE {seq}, the current "
            f"revision is {inst.sequence} (RFC 5546 sections 2.1.4, 2.1.5): stale",
        )
    if seq > inst.sequence:
        warnings.append(
            f"REPLY from {address} answers SEQUENCE {seq}, newer than the stored "
            f"{inst.sequence} of the {where}"
        )

    row = base.attendees.get((key, address))
    # An existing override without this attendee means the organiser left them out
    # of that instance: their reply goes through the uninvited path below.
    if row is None and key == "" and any(k == address and ik for (ik, k) in base.attendees):
        # Invited to some instances only: a series reply covers those instances.
        return _propagate_only(comp, line, address, seq, stamp, base, ctx, warnings)
    if row is None:
        admitted = _admit_unknown(msg, line, address, key, base, ctx, warnings)
        if isinstance(admitted, Decision):
            return admitted
        row = admitted
        new_row = True
    else:
        new_row = False
        verdict = _order(row, seq, stamp)
        if verdict == "duplicate" and key and _inherited(base, row, line):
            # Same version as the series answer it inherited: an instance-specific
            # answer outranks the series one (a REPLY with master and override
            # components carries one DTSTAMP), so applying it keeps the order of
            # arrival irrelevant.
            verdict = None
        if verdict is not None:
            return _Step(
                verdict,
                f"REPLY from {address} for the {where} (SEQUENCE {seq}, DTSTAMP "
                f"{_stamp_text(stamp)}) is {_VERDICT_TEXT[verdict]} "
                f"the one applied (SEQUENCE {row.reply_sequence}, DTSTAMP "
                f"{_stamp_text(row.reply_dtstamp)}) (RFC 5546 section 2.1.5)",
            )

    step_changes, outgoing, notes = _apply_row(
        comp, line, key, row, new_row, seq, stamp, base, ctx, warnings
    )
    changes.extend(step_changes)
    # The series reply also answers the attendee's instances that hold no newer
    # instance-specific answer; THISANDFUTURE does the same for later instances.
    after = apply_changes(base, step_changes)
    assert after is not None
    for okey in _propagation_keys(after, key, this_and_future):
        orow = after.attendees.get((okey, address))
        oinst = after.instances[okey]
        if orow is None or oinst.sequence > seq or _order(orow, seq, stamp) is not None:
            continue
        more, more_out, _ = _apply_row(
            comp, line, okey, orow, False, seq, stamp, after, ctx, warnings
        )
        changes.extend(more)
        # A delegate cancelled for the series needs no CANCEL per instance as well.
        series_cancelled = {
            r
            for o in outgoing
            if o.method == Method.CANCEL and o.instance_key == key
            for r in o.recipients
        }
        outgoing.extend(
            o
            for o in more_out
            if not (o.method == Method.CANCEL and set(o.recipients) <= series_cancelled)
        )
        nxt = apply_changes(after, more)
        assert nxt is not None
        after = nxt
    partstat = (line.param("PARTSTAT") or "NEEDS-ACTION").upper()
    text = f"{address} replied {partstat} for the {where} (SEQUENCE {seq})"
    if notes:
        text += "; " + "; ".join(notes)
    comment = comp.text("COMMENT").strip()
    if comment:
        # Section 3.2.3: the attendee's message to the organiser, kept with the outcome.
        text += f"; comment: {comment[:200]}"
    return _Step("applied", text, changes, outgoing)


def _inherited(state: StoredObject, row: AttendeeState, line: Property) -> bool:
    """Does the override ``row`` hold the series answer, not an instance-specific one?"""
    series = state.attendees.get(("", row.address))
    if series is None:
        return False
    partstat = (line.param("PARTSTAT") or "NEEDS-ACTION").upper()
    return (
        (series.reply_sequence, series.reply_dtstamp) == (row.reply_sequence, row.reply_dtstamp)
        and series.partstat == row.partstat
        and partstat != row.partstat
    )


def _propagation_keys(state: StoredObject, key: str, this_and_future: bool) -> list[str]:
    if key == "":
        return [k for k in _instance_order(state) if k]
    if this_and_future:
        start = to_utc(key_to_value(key))
        return [k for k in _instance_order(state) if k and to_utc(key_to_value(k)) > start]
    return []


def _propagate_only(
    comp: Component,
    line: Property,
    address: str,
    seq: int,
    stamp: datetime | None,
    state: StoredObject,
    ctx: Context,
    warnings: list[str],
) -> _Step:
    when = stamp
    changes: list[Change] = []
    after = state
    for okey in _propagation_keys(state, "", False):
        orow = after.attendees.get((okey, address))
        oinst = after.instances[okey]
        if orow is None or oinst.sequence > seq or _order(orow, seq, when) is not None:
            continue
        more, _, _ = _apply_row(comp, line, okey, orow, False, seq, when, after, ctx, warnings)
        changes.extend(more)
        nxt = apply_changes(after, more)
        assert nxt is not None
        after = nxt
    if not changes:
        return _Step("stale", f"series REPLY from {address} is not newer for any instance")
    return _Step("applied", f"{address} replied for the instances they are invited to", changes)


def _stamp_text(stamp: datetime | None) -> str:
    return format_utc(stamp) if stamp is not None else "none"


def _order(row: AttendeeState, seq: int, stamp: datetime | None) -> str | None:
    """'stale' / 'duplicate' when the reply is not newer than the row's last reply."""
    if row.reply_sequence is None:
        return None
    when = stamp
    cmp = compare_versions(seq, when, row.reply_sequence, row.reply_dtstamp)
    if cmp < 0:
        return "stale"
    if cmp == 0:
        return "duplicate"
    return None


def _instance_problem(
    master: Component, key: str, resolver: TzResolver, ctx: Context
) -> tuple[Outcome, str] | None:
    """Is ``key`` an instance of the series?  (RFC 5546 section 4.7.2: bad RECURRENCE-ID)"""
    from gateway.domain.recurrence import is_recurring, occurrences

    if not is_recurring(master):
        return (
            Outcome.REJECTED_INVALID,
            f"REPLY names RECURRENCE-ID {key} but the event does not recur",
        )
    for prop in master.get_all("EXDATE"):
        try:
            excluded = {to_utc(v) for v in resolver.values(prop)}
        except ValueError:
            continue
        if to_utc(key_to_value(key)) in excluded:
            return (
                Outcome.IGNORED_STALE,
                f"REPLY for instance {key}, which the organiser has excluded (EXDATE)",
            )
    instant = to_utc(key_to_value(key))
    found = occurrences(
        master,
        resolver,
        instant - timedelta(seconds=1),
        instant + timedelta(seconds=1),
        4,
    )
    if not any(o.key == key or o.start == instant for o in found):
        return (
            Outcome.REJECTED_INVALID,
            f"REPLY names RECURRENCE-ID {key}, which is not an instance of the series "
            "(RFC 5546 section 4.7.2)",
        )
    return None


def _admit_unknown(
    msg: ITipMessage,
    line: Property,
    address: str,
    key: str,
    state: StoredObject,
    ctx: Context,
    warnings: list[str],
) -> AttendeeState | Decision:
    """A reply from an address without a row: delegate, group member or party crasher."""
    parsed = attendee_from_prop(line, key)
    for delegator in parsed.delegated_from:
        if (key, delegator) in state.attendees:
            # Section 5.2.2: accepted even before the delegator's REPLY arrives.
            return replace(parsed, partstat="NEEDS-ACTION", rsvp=True)
    for group in parsed.member:
        grow = state.attendees.get((key, group))
        if grow is not None and grow.cutype in _GROUP_TYPES:
            # Section 3.7.2: a member of an invited group answers as an individual.
            return replace(parsed, cutype="INDIVIDUAL", partstat="NEEDS-ACTION")
    policy = (ctx.owner.party_crashers or "hold").lower()
    where = "series" if key == "" else f"instance {key}"
    if policy == "accept":
        warnings.append(
            f"{address} was not invited to the {where}; added (party crasher policy "
            "'accept', RFC 5546 section 3.2.2.6)"
        )
        return replace(parsed, partstat="NEEDS-ACTION", rsvp=False)
    if policy == "ignore":
        return Decision(
            Outcome.IGNORED_POLICY,
            f"REPLY from {address}, who was not invited to the {where} (party crasher, "
            "RFC 5546 section 3.2.2.6): ignored by policy",
            warnings=warnings,
            recurrence_id=key,
        )
    resolver = TzResolver.for_calendar(msg.calendar)
    comp = msg.components[0]
    return Decision(
        Outcome.HELD_PENDING,
        f"REPLY from {address}, who was not invited to the {where} (party crasher): held "
        "for the organiser to decide",
        hold=[
            HoldRequest(
                kind="party-crasher",
                instance_key=key,
                sender=address,
                method=Method.REPLY,
                payload=itip_payload(msg),
                sequence=sequence_of(comp),
                dtstamp=dtstamp_of(comp, resolver),
            )
        ],
        warnings=warnings,
        recurrence_id=key,
    )


def _replied(
    row: AttendeeState,
    line: Property,
    comp: Component,
    key: str,
    seq: int,
    stamp: datetime | None,
    ctx: Context,
) -> AttendeeState:
    """``row`` updated with the received ATTENDEE line (its parameters kept)."""
    parsed = attendee_from_prop(line, key)
    prop = row.prop.copy()
    for name, values in line.params.items():
        prop.params[name] = list(values)
    partstat = parsed.partstat
    if partstat == "DELEGATED":
        delegated_to = parsed.delegated_to or row.delegated_to
    else:
        delegated_to = parsed.delegated_to
    statuses = [p.value for p in comp.get_all("REQUEST-STATUS")]
    progress = _percent(comp)
    if progress is not None:
        prop = with_percent_complete(prop, progress)
    return replace(
        row,
        instance_key=key,
        prop=prop,
        partstat=partstat,
        role=parsed.role if "ROLE" in line.params else row.role,
        rsvp=parsed.rsvp if "RSVP" in line.params else row.rsvp,
        delegated_to=delegated_to,
        delegated_from=parsed.delegated_from or row.delegated_from,
        sent_by=parsed.sent_by,
        member=row.member or parsed.member,
        request_status="\n".join(statuses),
        reply_sequence=seq,
        reply_dtstamp=stamp,
        replied_at=ctx.now,
    )


def _percent(comp: Component) -> int | None:
    """PERCENT-COMPLETE of a VTODO REPLY (RFC 5546 3.4.3; RFC 5545 3.8.1.8: 0-100)."""
    if comp.name != "VTODO":
        return None
    raw = comp.value("PERCENT-COMPLETE")
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return min(max(value, 0), 100)


def _apply_row(
    comp: Component,
    line: Property,
    key: str,
    row: AttendeeState,
    new_row: bool,
    seq: int,
    stamp: datetime | None,
    state: StoredObject,
    ctx: Context,
    warnings: list[str],
) -> tuple[list[Change], list[OutgoingMessage], list[str]]:
    """The changes for one (instance, attendee) row, with delegation side effects."""
    updated = _replied(row, line, comp, key, seq, stamp, ctx)
    changes: list[Change] = [PutAttendee(updated)]
    notes: list[str] = []
    outgoing: list[OutgoingMessage] = []
    if new_row:
        notes.append(f"added {updated.address} as attendee")

    new_delegates: list[str] = []
    if updated.partstat == "DELEGATED":
        lines = {normalise(p.value): p for p in comp.get_all("ATTENDEE")}
        for delegate in updated.delegated_to:
            drow = state.attendees.get((key, delegate))
            if drow is None:
                dline = lines.get(delegate)
                prop = dline.copy() if dline is not None else Property("ATTENDEE", to_uri(delegate))
                base = attendee_from_prop(prop, key)
                changes.append(
                    PutAttendee(
                        replace(
                            base,
                            partstat="NEEDS-ACTION",
                            rsvp=True,
                            role=base.role
                            if dline is not None and dline.param("ROLE")
                            else row.role,
                            delegated_from=(updated.address,),
                            delegated_to=(),
                        )
                    )
                )
                new_delegates.append(delegate)
            elif updated.address not in drow.delegated_from:
                changes.append(
                    PutAttendee(
                        replace(drow, delegated_from=(*drow.delegated_from, updated.address))
                    )
                )
        if new_delegates:
            notes.append(f"delegated to {', '.join(new_delegates)}")
        dropped = _redelegated(row, updated, key, state, changes)
        if dropped:
            notes.append(f"earlier delegate(s) {', '.join(dropped)} cancelled")
            outgoing.extend(_delegate_cancels(dropped, row, key, state, ctx))

    declined_delegators: list[str] = []
    if updated.partstat == "DECLINED" and updated.delegated_from:
        for delegator in updated.delegated_from:
            frow = state.attendees.get((key, delegator))
            if frow is None or updated.address not in frow.delegated_to:
                continue
            # Section 4.2.5/4.2.7: the delegator may delegate again or attend.
            changes.append(
                PutAttendee(
                    replace(
                        frow,
                        partstat="NEEDS-ACTION",
                        rsvp=True,
                        delegated_to=tuple(a for a in frow.delegated_to if a != updated.address),
                    )
                )
            )
            declined_delegators.append(delegator)

    if new_delegates or declined_delegators:
        after = apply_changes(state, changes)
        assert after is not None
        if not after.attendees_complete:
            warnings.append("delegation REQUEST not sent: the attendee rows were not all loaded")
            return changes, outgoing, notes
        keys = [key] if key else None
        for delegate in new_delegates:
            outgoing.append(
                OutgoingMessage(
                    method=Method.REQUEST,
                    sender=normalise(ctx.owner.address),
                    recipients=(delegate,),
                    calendar=render_request(after, ctx, keys),
                    uid=after.header.uid,
                    instance_key=key,
                    subject_kind="invitation",
                    summary=after.header.summary,
                    changes=(f"Delegated to you by {updated.address}",),
                )
            )
        for delegator in declined_delegators:
            comment = f"DELEGATE (ATTENDEE {to_uri(updated.address)}) DECLINED YOUR INVITATION"
            outgoing.append(
                OutgoingMessage(
                    method=Method.REQUEST,
                    sender=normalise(ctx.owner.address),
                    recipients=(delegator,),
                    calendar=render_request(after, ctx, keys, comment=comment),
                    uid=after.header.uid,
                    instance_key=key,
                    subject_kind="updated",
                    summary=after.header.summary,
                    changes=(f"{updated.address} declined the delegation",),
                )
            )
            notes.append(f"REQUEST re-sent to delegator {delegator}")
    return changes, outgoing, notes


def _redelegated(
    row: AttendeeState,
    updated: AttendeeState,
    key: str,
    state: StoredObject,
    changes: list[Change],
) -> list[str]:
    """Delegates the delegator replaced by delegating again (RFC 5546 4.2.5, 2.1.2).

    "It is possible for the original delegate to delegate the meeting to someone
    else": the earlier delegate no longer attends on the delegator's behalf.  A
    delegate who holds the seat only through this delegator is removed (and gets a
    CANCEL, :func:`_delegate_cancels`); one also delegated by someone else only loses
    this DELEGATED-FROM.  A delegate who declined was already unlinked (4.2.7).
    """
    dropped: list[str] = []
    for earlier in row.delegated_to:
        if earlier in updated.delegated_to:
            continue
        drow = state.attendees.get((key, earlier))
        if drow is None or row.address not in drow.delegated_from:
            continue
        rest = tuple(a for a in drow.delegated_from if a != row.address)
        if rest:
            changes.append(PutAttendee(replace(drow, delegated_from=rest)))
            continue
        changes.append(DeleteAttendee(key, earlier))
        dropped.append(earlier)
    return dropped


def _delegate_cancels(
    dropped: list[str], row: AttendeeState, key: str, state: StoredObject, ctx: Context
) -> list[OutgoingMessage]:
    """A CANCEL naming the removed delegate (RFC 5546 3.2.5: removing an attendee)."""
    inst = state.instances.get(key)
    if inst is None:
        return []
    out: list[OutgoingMessage] = []
    for delegate in dropped:
        drow = state.attendees[(key, delegate)]
        comp = render_component(inst, [drow])
        comp.set("DTSTAMP", format_utc(ctx.now))
        comp.set("SEQUENCE", str(inst.sequence))
        comp.add(
            Property(
                "COMMENT",
                escape_text(f"{row.address} delegated the meeting to someone else"),
            )
        )
        out.append(
            OutgoingMessage(
                method=Method.CANCEL,
                sender=normalise(ctx.owner.address),
                recipients=(delegate,),
                calendar=render_calendar(state.header, Method.CANCEL, [comp], prodid=ctx.prodid),
                uid=state.header.uid,
                instance_key=key,
                subject_kind="cancelled",
                summary=state.header.summary,
                changes=(f"{row.address} delegated the meeting to someone else",),
            )
        )
    return out


# --- REFRESH --------------------------------------------------------------------------


def _checked_sender(
    msg: ITipMessage, stored: StoredObject | None, ctx: Context, method: Method, unknown: str
) -> Decision | tuple[StoredObject, Component, str, list[str]]:
    """The checks REFRESH and COUNTER share (RFC 5546 3.2.6, 3.2.7): a valid message for
    a stored event, from the one attendee it names, sent by that attendee (or SENT-BY).

    Returns the refusal, or (stored, component, attendee address, warnings).
    """
    warnings: list[str] = []
    invalid = _validate(msg, warnings)
    if invalid is not None:
        return invalid
    if stored is None:
        return Decision(
            Outcome.IGNORED_UNKNOWN,
            f"{method.value} for unknown UID {msg.uid!r}: {unknown}",
            warnings=warnings,
        )
    guarded = _guard(msg, stored, ctx, warnings)
    if guarded is not None:
        return guarded
    comp = msg.components[0]
    line = _pick_attendee(comp, ctx, method, warnings)
    if isinstance(line, str):
        return Decision(Outcome.REJECTED_INVALID, line, warnings=warnings)
    address = normalise(line.value)
    refused = _authorise(address, normalise(line.param("SENT-BY")), ctx, method.value)
    if refused is not None:
        return Decision(Outcome.REJECTED_UNAUTHORISED, refused, warnings=warnings)
    return stored, comp, address, warnings


def _refresh(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    checked = _checked_sender(msg, stored, ctx, Method.REFRESH, "nothing to send")
    if isinstance(checked, Decision):
        return checked
    stored, comp, address, warnings = checked
    resolver = stored_resolver(stored, msg.calendar)
    try:
        key = instance_key_of(comp, resolver)
    except ValueError:
        key = ""
    attending = [k for k in _instance_order(stored) if (k, address) in stored.attendees]
    if not attending:
        return Decision(
            Outcome.REJECTED_UNAUTHORISED,
            f"REFRESH from {address}, who is not an attendee: nothing sent "
            "(RFC 5546 section 6.1.6)",
            warnings=warnings,
            recurrence_id=key,
        )
    if key and key in stored.instances:
        keys = [key] if key in attending else []
    elif "" in attending:
        keys = _instance_order(stored)
    else:
        keys = attending
    if not keys:
        return Decision(
            Outcome.REJECTED_UNAUTHORISED,
            f"REFRESH from {address} for instance {key}, which they do not attend "
            "(RFC 5546 section 6.1.6)",
            warnings=warnings,
            recurrence_id=key,
        )
    calendar = render_request(stored, ctx, keys)
    seq = stored.instances[keys[0]].sequence
    return Decision(
        Outcome.APPLIED,
        f"REFRESH from {address}: sent the current REQUEST (SEQUENCE {seq}, "
        f"{len(keys)} component(s)) (RFC 5546 section 3.2.6)",
        outgoing=[
            OutgoingMessage(
                method=Method.REQUEST,
                sender=normalise(ctx.owner.address),
                recipients=(address,),
                calendar=calendar,
                uid=stored.header.uid,
                instance_key=key,
                subject_kind="refresh",
                summary=stored.header.summary,
                answering=True,
            )
        ],
        warnings=warnings,
        recurrence_id=key,
    )


# --- COUNTER --------------------------------------------------------------------------


def _counter(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    checked = _checked_sender(msg, stored, ctx, Method.COUNTER, "no event to counter")
    if isinstance(checked, Decision):
        return checked
    stored, comp, address, warnings = checked
    if not any(a == address for (_, a) in stored.attendees):
        return Decision(
            Outcome.REJECTED_UNAUTHORISED,
            f"COUNTER from {address}, who is not an attendee (RFC 5546 section 3.2.7)",
            warnings=warnings,
        )
    resolver = stored_resolver(stored, msg.calendar)
    try:
        key = instance_key_of(comp, resolver)
    except ValueError as exc:
        return Decision(
            Outcome.REJECTED_INVALID, f"unreadable RECURRENCE-ID: {exc}", warnings=warnings
        )
    seq = sequence_of(comp, warnings)
    stamp = dtstamp_of(comp, resolver, warnings)
    inst = stored.instances.get(key) or stored.instances.get("")
    if inst is not None and seq < inst.sequence:
        return Decision(
            Outcome.IGNORED_STALE,
            f"COUNTER from {address} proposes changes to SEQUENCE {seq}; the event is at "
            f"{inst.sequence} (RFC 5546 section 2.1.5)",
            warnings=warnings,
            recurrence_id=key,
        )
    changes: list[Change] = []
    for held in stored.held:
        if held.kind != "counter" or held.sender != address or held.instance_key != key:
            continue
        cmp = compare_versions(seq, stamp, held.sequence, held.dtstamp)
        if cmp <= 0:
            return Decision(
                Outcome.DUPLICATE if cmp == 0 else Outcome.IGNORED_STALE,
                f"COUNTER from {address} is {'the same as' if cmp == 0 else 'older than'} "
                f"the pending proposal #{held.id}",
                warnings=warnings,
                recurrence_id=key,
            )
        changes.append(ResolveHeld(held.id, "superseded"))
    proposal = [
        f"{name} {comp.value(name)}"
        for name in ("DTSTART", "DTEND", "DUE", "LOCATION")
        if comp.get(name) is not None
    ]
    return Decision(
        Outcome.RECORDED,
        f"COUNTER from {address} for the {'series' if not key else 'instance ' + key} "
        f"recorded as a proposal ({', '.join(proposal) or 'no time or place change'}); "
        "waiting for the organiser (RFC 5546 section 3.2.7)",
        changes=changes,
        hold=[
            HoldRequest(
                kind="counter",
                instance_key=key,
                sender=address,
                method=Method.COUNTER,
                payload=itip_payload(msg),
                sequence=seq,
                dtstamp=stamp,
            )
        ],
        warnings=warnings,
        recurrence_id=key,
    )
