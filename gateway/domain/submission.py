"""The local organiser's own changes: submissions, outbound relay, COUNTER answers.

Where organiser copies come from (issue 3):

* :func:`submit` - ``imip-gateway send FILE.ics``: the organiser's full event.  The
  copy is stored (role organizer), compared per instance with the stored one, and
  iTIP messages are queued to exactly the attendees concerned;
* :func:`record_outbound` - a REQUEST/CANCEL/ADD/PUBLISH the organiser sent through
  our SMTP listener: the copy is recorded, no message is generated (the transport
  forwards the original unchanged);
* :func:`counter_accept` / :func:`counter_decline` - the organiser's answer to a held
  COUNTER (RFC 5546 section 3.2.7: accepting reschedules the event, section 3.2.2.1;
  declining sends DECLINECOUNTER, section 3.2.8).

Rules of :func:`submit`:

* SEQUENCE (RFC 5546 section 2.1.4): bumped per instance when a significant property
  changed (``ctx.significant``: DTSTART, DTEND, DURATION, DUE, RRULE, RDATE, EXDATE,
  STATUS and, by default, LOCATION) unless the submission already carries a higher
  one; it never goes backwards.  CANCEL always increments it.
* Attendees keep their stored PARTSTAT (and reply ordering data) when nothing
  significant changed and are reset to NEEDS-ACTION (RSVP=TRUE) when something did.
  Delegates and group members the gateway added from REPLYs (they are not in the
  organiser's file) are kept while their delegator/group stays.
* Who gets what: a new object goes to every attendee; on an update, added attendees
  get a REQUEST, every attendee of an instance whose content changed gets a REQUEST
  (a change of the attendee list alone informs only the added and removed attendees),
  removed attendees get a CANCEL (per instance: removal from one override is a CANCEL
  carrying that RECURRENCE-ID).  A change confined to overrides is sent as a REQUEST
  carrying only those overrides (RECURRENCE-ID).  RDATEs added with nothing else
  significant are sent as ADD (section 3.2.4) to the existing attendees.  A delegator
  who asked for no further updates (RSVP=FALSE, section 4.2.5 C) is skipped.
* Removing instances (RFC 5546 sections 3.2.5, 4.4.3): a new EXDATE, a dropped RDATE
  or an override newly STATUS:CANCELLED sends a CANCEL with that RECURRENCE-ID (one
  component per instance) to the instance's attendees instead of a REQUEST; the other
  instances' answers stay.  The CANCEL's SEQUENCE is one above the instance's (and
  the series') current one; the master keeps its SEQUENCE when only instances were
  removed, as the attendee side records an instance CANCEL without touching its
  series, so the attendees' later series REPLYs are not discarded as outdated (2.1.5).
  With another significant change in the same submission everyone gets the full
  REQUEST (which shows the EXDATE) and no separate CANCEL.
* METHOD:CANCEL (or STATUS:CANCELLED on the master) cancels for everyone; a CANCEL
  holding only overrides cancels those instances.
* Local attendees are addressed like any other (the service delivers locally).
* Creating an object asks for the release of REPLYs held for its UID (RFC 5546
  section 5.2.1).

All functions need the complete stored object (every attendee row).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from gateway.domain.addresses import normalise, to_uri
from gateway.domain.apply import apply_changes
from gateway.domain.derive import derive_instance
from gateway.domain.ical import Component, Property, escape_text
from gateway.domain.message import parse_itip
from gateway.domain.model import (
    AttendeeState,
    Change,
    Context,
    Decision,
    DeleteAttendee,
    DeleteInstance,
    HeldItem,
    ITipMessage,
    Method,
    ObjectHeader,
    Outcome,
    OutgoingMessage,
    PutAttendee,
    PutInstance,
    PutObject,
    ReleaseHeld,
    ResolveHeld,
    Role,
    StoredInstance,
    StoredObject,
)
from gateway.domain.organizer import (
    compact,
    owner_addresses,
    render_request,
    stored_resolver,
)
from gateway.domain.state import (
    attendees_of,
    compare_versions,
    render_calendar,
    render_component,
    split_component,
)
from gateway.domain.timeutil import TzResolver, format_utc, instance_key, parse_duration

__all__ = ["counter_accept", "counter_decline", "record_outbound", "submit"]

SCHEDULING = ("VEVENT", "VTODO", "VJOURNAL")
_TIME_PROPS = ("DTSTART", "DTEND", "DURATION", "DUE")
_RECURRENCE_PROPS = ("RRULE", "RDATE", "EXDATE")
# Properties that change with every save and mean nothing to an attendee.
_VOLATILE = frozenset({"DTSTAMP", "SEQUENCE", "LAST-MODIFIED", "CREATED", "ATTENDEE"})
# ATTENDEE parameters the attendee's REPLY sets: the organiser's file does not override
# them (its client rarely knows the answers the gateway received).
_REPLY_PARAMS = frozenset({"PARTSTAT", "DELEGATED-TO", "DELEGATED-FROM", "SENT-BY", "RSVP"})
# What a COUNTER may propose that an accept carries over (RFC 5546 section 3.2.7).
_COUNTER_PROPS = (
    "DTSTART",
    "DTEND",
    "DURATION",
    "DUE",
    "LOCATION",
    "SUMMARY",
    "DESCRIPTION",
    "GEO",
    "RESOURCES",
    "PRIORITY",
)


# --- comparing two versions of one instance --------------------------------------------


@dataclass
class _Diff:
    significant: list[str] = field(default_factory=list)
    visible: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    rdate_added: list[str] = field(default_factory=list)  # instance keys
    rdate_only_added: bool = False
    # Instances the new version no longer has: a new EXDATE or a removed RDATE.
    removed_keys: list[str] = field(default_factory=list)
    removal_only: bool = False


def _keys(props: Iterable[Property], resolver: TzResolver) -> frozenset[str]:
    out: set[str] = set()
    for prop in props:
        try:
            out.update(instance_key(v) for v in resolver.values(prop))
        except ValueError:
            out.add(prop.value)
    return frozenset(out)


def _comparable(name: str, comp: Component, resolver: TzResolver) -> object:
    props = comp.get_all(name)
    if not props:
        return None
    if name in ("DTSTART", "DTEND", "DUE"):
        try:
            return instance_key(resolver.value(props[0]))
        except ValueError:
            return props[0].value
    if name in ("RDATE", "EXDATE"):
        return _keys(props, resolver)
    if name == "DURATION":
        try:
            return parse_duration(props[0].value)
        except ValueError:
            return props[0].value
    if name == "RRULE":
        return frozenset(
            frozenset(part.strip().upper() for part in p.value.split(";") if part.strip())
            for p in props
        )
    if name == "STATUS":
        return props[0].value.strip().upper()
    return tuple(p.text.strip() for p in props)


def _shown(comp: Component | None, name: str) -> str:
    if comp is None:
        return "-"
    prop = comp.get(name)
    if prop is None:
        return "-"
    text = prop.text.strip()
    tzid = prop.param("TZID")
    return f"{text} ({tzid})" if tzid else text


def _diff(
    old: Component,
    new: Component,
    old_res: TzResolver,
    new_res: TzResolver,
    significant: frozenset[str],
) -> _Diff:
    diff = _Diff()
    rdate_grew = False
    removed: set[str] = set()
    names = {p.name for p in old.properties} | {p.name for p in new.properties}
    for name in sorted(names):
        if name in _VOLATILE or name == "RECURRENCE-ID":
            continue
        if name in significant or name in _TIME_PROPS or name in _RECURRENCE_PROPS:
            before = _comparable(name, old, old_res)
            after = _comparable(name, new, new_res)
            if before == after:
                continue
            if name in significant:
                diff.significant.append(name)
            else:
                diff.visible.append(name)
            was = before if isinstance(before, frozenset) else frozenset()
            now = after if isinstance(after, frozenset) else frozenset()
            if name == "RDATE":
                diff.rdate_added = sorted(str(k) for k in now - was)
                rdate_grew = was <= now
                removed.update(str(k) for k in was - now)
            elif name == "EXDATE":
                removed.update(str(k) for k in now - was)
            continue
        if name.startswith("X-MOZ-"):
            continue  # Thunderbird bookkeeping (X-MOZ-GENERATION, X-MOZ-LASTACK)
        before_lines = Counter(p.to_line() for p in old.get_all(name))
        after_lines = Counter(p.to_line() for p in new.get_all(name))
        if before_lines != after_lines:
            diff.visible.append(name)
    diff.lines = _change_lines(old, new, diff)
    diff.rdate_only_added = (
        diff.significant == ["RDATE"] and not diff.visible and bool(diff.rdate_added) and rdate_grew
    )
    diff.removed_keys = sorted(removed)
    # RFC 5546 section 3.2.5: removing instances (new EXDATE, dropped RDATE) and
    # nothing else is a CANCEL of those instances, not a new revision of the series.
    diff.removal_only = (
        bool(removed)
        and not diff.rdate_added
        and (set(diff.significant) | set(diff.visible)) <= {"EXDATE", "RDATE"}
    )
    return diff


def _change_lines(old: Component, new: Component, diff: _Diff) -> list[str]:
    changed = set(diff.significant) | set(diff.visible)
    lines: list[str] = []
    if changed & set(_TIME_PROPS):
        lines.append(
            f"Time changed: {_shown(old, 'DTSTART')} - {_shown(old, 'DTEND')} -> "
            f"{_shown(new, 'DTSTART')} - {_shown(new, 'DTEND')}"
        )
    if "LOCATION" in changed:
        lines.append(f"Location changed: {_shown(old, 'LOCATION')} -> {_shown(new, 'LOCATION')}")
    if changed & set(_RECURRENCE_PROPS):
        lines.append("Recurrence changed: " + ", ".join(sorted(changed & set(_RECURRENCE_PROPS))))
    if "STATUS" in changed:
        lines.append(f"Status changed: {_shown(old, 'STATUS')} -> {_shown(new, 'STATUS')}")
    if "SUMMARY" in changed:
        lines.append(f"Title changed: {_shown(old, 'SUMMARY')} -> {_shown(new, 'SUMMARY')}")
    if "DESCRIPTION" in changed:
        lines.append("Description changed")
    rest = sorted(
        changed
        - set(_TIME_PROPS)
        - set(_RECURRENCE_PROPS)
        - {"LOCATION", "STATUS", "SUMMARY", "DESCRIPTION"}
    )
    if rest:
        lines.append("Also changed: " + ", ".join(rest))
    return lines


# --- the plan ------------------------------------------------------------------------------


@dataclass
class _Plan:
    changes: list[Change] = field(default_factory=list)
    full: set[str] = field(default_factory=set)  # attendees to get the whole event
    partial: dict[str, set[str]] = field(default_factory=dict)  # attendee -> override keys
    add: dict[str, list[str]] = field(default_factory=dict)  # attendee -> new RDATE keys
    cancel: dict[str, set[str]] = field(default_factory=dict)  # removed attendee -> keys
    lines: dict[str, list[str]] = field(default_factory=dict)  # key -> change lines
    invited: set[str] = field(default_factory=set)  # attendees new to the object
    notes: list[str] = field(default_factory=list)
    # Instances the organiser removed (EXDATE, dropped RDATE, STATUS:CANCELLED
    # override): key -> attendees owed a CANCEL with that RECURRENCE-ID (3.2.5).
    instance_cancel: dict[str, set[str]] = field(default_factory=dict)
    cancel_instances: dict[str, StoredInstance] = field(default_factory=dict)
    cancel_seq: dict[str, int] = field(default_factory=dict)
    cancel_rows: dict[str, list[AttendeeState]] = field(default_factory=dict)


def _rows_by_address(rows: Iterable[AttendeeState]) -> dict[str, AttendeeState]:
    return {r.address: r for r in rows}


def _reset(row: AttendeeState) -> AttendeeState:
    """Section 2.1.4: a significant change invalidates the participation status."""
    return replace(row, partstat="NEEDS-ACTION", rsvp=True, delegated_to=())


def _merge_rows(
    key: str,
    old_rows: dict[str, AttendeeState],
    new_rows: list[AttendeeState],
    significant: bool,
    owners: frozenset[str],
) -> tuple[list[AttendeeState], list[str], list[AttendeeState]]:
    """(rows to keep/put, addresses added, rows removed) for one instance."""
    out: list[AttendeeState] = []
    added: list[str] = []
    present = {r.address for r in new_rows}
    for row in new_rows:
        old = old_rows.get(row.address)
        if old is None:
            out.append(replace(row, instance_key=key))
            added.append(row.address)
            continue
        prop = old.prop.copy()
        for name, values in row.prop.params.items():
            if name not in _REPLY_PARAMS:
                prop.params[name] = list(values)
        merged = replace(
            old,
            instance_key=key,
            prop=prop,
            role=row.role,
            cutype=row.cutype,
            member=row.member or old.member,
            rsvp=row.rsvp or old.rsvp,
        )
        if row.address in owners:
            merged = replace(merged, partstat=row.partstat)
        elif significant:
            merged = _reset(merged)
        out.append(merged)
    removed: list[AttendeeState] = []
    for address, old in old_rows.items():
        if address in present:
            continue
        # Added by the gateway from a REPLY (delegate, group member): the organiser's
        # client does not know them; they stay while their delegator/group stays.
        anchored = any(a in present for a in (*old.delegated_from, *old.member))
        if anchored:
            out.append(_reset(old) if significant and address not in owners else old)
        else:
            removed.append(old)
    return out, added, removed


def _plan_update(
    new: dict[str, tuple[StoredInstance, list[AttendeeState]]],
    stored: StoredObject | None,
    ctx: Context,
    new_res: TzResolver,
    *,
    bump: bool,
    full_replace: bool,
) -> _Plan:
    """Per-instance diff of a submission against the stored copy."""
    plan = _Plan()
    owners = owner_addresses(ctx)
    old_res = stored_resolver(stored) if stored is not None else new_res
    old_master = stored.instances.get("") if stored is not None else None
    previously: set[str] = {a for (_, a) in stored.attendees} if stored is not None else set()
    master_diff: _Diff | None = None

    for key in sorted(new, key=lambda k: (k != "", k)):
        inst, rows = new[key]
        old_inst = stored.instances.get(key) if stored is not None else None
        old_rows: dict[str, AttendeeState] = {}
        if old_inst is not None and stored is not None:
            old_rows = _rows_by_address(attendees_of(stored.attendees, key))
        elif key and old_master is not None and stored is not None:
            # A new override: compare with the instance as the master defined it.
            old_inst = derive_instance(old_master, key, old_res)
            old_rows = _rows_by_address(attendees_of(stored.attendees, ""))
        if old_inst is None:
            diff = _Diff(significant=[], visible=[], lines=["New event"])
            seq = inst.sequence
            changed = True
        else:
            diff = _diff(old_inst.component, inst.component, old_res, new_res, ctx.significant)
            seq = max(inst.sequence, old_inst.sequence)
            removes = key == "" and diff.removal_only
            if diff.significant and inst.sequence <= old_inst.sequence and bump and not removes:
                seq = old_inst.sequence + 1
            changed = bool(diff.significant or diff.visible) or seq != old_inst.sequence
        if key == "":
            master_diff = diff
        quiet_add = diff.rdate_only_added and old_inst is not None
        # Removing instances (RFC 5546 section 3.2.5) changes nothing for the others:
        # their answers stay and the removed instances get a CANCEL of their own.
        removal = key == "" and old_inst is not None and diff.removal_only
        cancelled_now = (
            key != "" and inst.cancelled and old_inst is not None and not old_inst.cancelled
        )
        significant = (
            bool(diff.significant)
            and old_inst is not None
            and not quiet_add
            and not removal
            and not cancelled_now
        )
        merged, added, removed = _merge_rows(key, old_rows, rows, significant, owners)

        comp = inst.component.copy()
        comp.set("SEQUENCE", str(seq))
        put = replace(inst, component=comp, sequence=seq)
        if changed or stored is None or key not in stored.instances:
            if bump:
                comp.set("DTSTAMP", format_utc(ctx.now))
            put = replace(put, dtstamp=ctx.now if bump else inst.dtstamp)
            plan.changes.append(PutInstance(put))
        for row in merged:
            if (
                old_rows.get(row.address) != row
                or old_inst is None
                or key not in (stored.instances if stored is not None else {})
            ):
                plan.changes.append(PutAttendee(row))
        for row in removed:
            if stored is not None and key in stored.instances:
                plan.changes.append(DeleteAttendee(key, row.address))
            plan.cancel.setdefault(row.address, set()).add(key)
        if diff.lines and old_inst is not None:
            plan.lines[key] = diff.lines

        recipients = [r for r in merged if r.address not in owners]
        if cancelled_now:
            # An override with STATUS:CANCELLED: a CANCEL for that instance to its
            # attendees (RFC 5546 sections 3.2.5, 4.4.3), not an updated REQUEST.
            plan.instance_cancel[key] = {r.address for r in recipients if not _no_updates(r, added)}
            plan.cancel_instances[key] = put
            plan.cancel_seq[key] = seq
            plan.lines.setdefault(key, []).append("cancelled")
            continue
        for row in recipients:
            if row.address not in previously:
                plan.invited.add(row.address)
            skip = _no_updates(row, added)
            if row.address in added or old_inst is None:
                _want(plan, row.address, key)
            elif quiet_add and key == "":
                plan.add[row.address] = list(diff.rdate_added)
            elif removal:
                continue  # the removed instances get their CANCEL below
            elif changed and not skip:
                _want(plan, row.address, key)

    removed_keys: set[str] = set()
    if master_diff is not None and stored is not None and old_master is not None:
        removed_keys = set(master_diff.removed_keys)
        new_master = new.get("")
        master_seq = max(
            new_master[0].sequence if new_master is not None else 0, old_master.sequence
        )
        for key in sorted(removed_keys):
            old_override = stored.instances.get(key)
            if old_override is not None and old_override.cancelled:
                continue  # its attendees were told already
            key_rows = attendees_of(stored.attendees, key if old_override is not None else "")
            plan.instance_cancel[key] = {
                r.address for r in key_rows if r.address not in owners and not _no_updates(r, [])
            }
            plan.cancel_rows[key] = key_rows
            if old_override is not None:
                plan.cancel_instances[key] = old_override
            seq_before = max(master_seq, old_override.sequence if old_override else 0)
            plan.cancel_seq[key] = seq_before + 1
            plan.lines.setdefault(key, []).append("cancelled")
            if old_override is not None and key not in new:
                plan.changes.append(DeleteInstance(key))
        if master_diff.removal_only and removed_keys:
            plan.lines.pop("", None)
            plan.notes.append("instance(s) removed: " + ", ".join(sorted(removed_keys)))
    if stored is not None and full_replace:
        for key in stored.instances:
            if key and key not in new and key not in removed_keys:
                # The override is gone: its attendees follow the master again.
                plan.changes.append(DeleteInstance(key))
                for row in attendees_of(stored.attendees, key):
                    if row.address not in owners:
                        plan.full.add(row.address)
                plan.lines.setdefault(key, []).append(f"Instance {key} reverts to the series")
    if (
        master_diff is not None
        and master_diff.significant
        and stored is not None
        and not master_diff.removal_only
    ):
        plan.notes.append("significant change: " + ", ".join(master_diff.significant))
    return plan


def _no_updates(row: AttendeeState, added: Iterable[str]) -> bool:
    """A delegator who asked for no further updates (RSVP=FALSE, RFC 5546 4.2.5 C)."""
    return row.partstat == "DELEGATED" and not row.rsvp and row.address not in added


def _want(plan: _Plan, address: str, key: str) -> None:
    if key == "":
        plan.full.add(address)
    else:
        plan.partial.setdefault(address, set()).add(key)


def _header(
    calendar: Component,
    master: StoredInstance | None,
    stored: StoredObject | None,
    ctx: Context,
    uid: str,
    component_type: str,
    sequence: int,
    *,
    status: str | None = None,
) -> ObjectHeader:
    zones: dict[str, Component] = {}
    if stored is not None:
        for vtz in stored.header.timezones:
            zones[(vtz.value("TZID") or "").strip()] = vtz
    for vtz in calendar.sub("VTIMEZONE"):
        zones[(vtz.value("TZID") or "").strip()] = vtz.copy()
    skip = {"PRODID", "VERSION", "METHOD"}
    if master is not None:
        comp = master.component
        org_prop = comp.get("ORGANIZER")
        return ObjectHeader(
            owner=normalise(ctx.owner.address),
            uid=uid,
            component_type=component_type,
            role=Role.ORGANIZER,
            organizer=normalise(org_prop.value) if org_prop else normalise(ctx.owner.address),
            organizer_sent_by=normalise(org_prop.param("SENT-BY")) if org_prop else "",
            sequence=sequence,
            dtstamp=master.dtstamp,
            status=status if status is not None else master.status,
            summary=comp.text("SUMMARY"),
            is_recurring=comp.get("RRULE") is not None or comp.get("RDATE") is not None,
            calendar_props=[p.copy() for p in calendar.properties if p.name not in skip],
            timezones=[z for k, z in zones.items() if k],
        )
    assert stored is not None
    return replace(
        stored.header,
        sequence=sequence,
        status=status if status is not None else stored.header.status,
        timezones=[z for k, z in zones.items() if k],
    )


# --- submit ----------------------------------------------------------------------------------


@dataclass
class _Parsed:
    method: str
    uid: str
    component_type: str
    components: list[Component]
    instances: dict[str, tuple[StoredInstance, list[AttendeeState]]]
    resolver: TzResolver


def _parse_submission(
    calendar: Component,
    stored: StoredObject | None,
    ctx: Context,
    warnings: list[str],
    allowed: Iterable[str],
) -> _Parsed | Decision:
    method = (calendar.value("METHOD") or "").strip().upper() or Method.REQUEST
    if method not in set(allowed):
        return Decision(
            Outcome.REJECTED_INVALID, f"METHOD:{method} cannot be submitted by an organiser"
        )
    comps = [c for c in calendar.components if c.name in SCHEDULING]
    if not comps:
        return Decision(Outcome.REJECTED_INVALID, "the calendar holds no VEVENT/VTODO/VJOURNAL")
    uids = {(c.value("UID") or "").strip() for c in comps}
    if len(uids) != 1 or "" in uids:
        return Decision(
            Outcome.REJECTED_INVALID,
            f"a submission must hold one UID (RFC 5546 section 1.4), found {sorted(uids)}",
        )
    types = {c.name for c in comps}
    if len(types) != 1:
        return Decision(Outcome.REJECTED_INVALID, f"mixed component types {sorted(types)}")
    uid = uids.pop()
    owners = owner_addresses(ctx)
    for comp in comps:
        org = normalise(comp.value("ORGANIZER"))
        if not org:
            comp.set("ORGANIZER", to_uri(ctx.owner.address))
            warnings.append(f"no ORGANIZER; set to {normalise(ctx.owner.address)}")
        elif org not in owners:
            return Decision(
                Outcome.REJECTED_UNAUTHORISED,
                f"ORGANIZER {org} is not the submitting local user {ctx.owner.address}",
            )
    if stored is not None and (
        stored.header.role != Role.ORGANIZER or normalise(stored.header.organizer) not in owners
    ):
        return Decision(
            Outcome.REJECTED_UNAUTHORISED,
            f"UID {uid!r} is stored as organised by {stored.header.organizer}; the organiser "
            "cannot be replaced (RFC 5546 section 6.1.3)",
        )
    resolver = (
        stored_resolver(stored, calendar)
        if stored is not None
        else (TzResolver.for_calendar(calendar))
    )
    instances: dict[str, tuple[StoredInstance, list[AttendeeState]]] = {}
    for comp in comps:
        try:
            inst, rows = split_component(comp, resolver, warnings)
        except ValueError as exc:
            return Decision(Outcome.REJECTED_INVALID, f"unreadable component: {exc}")
        if inst.key in instances:
            return Decision(Outcome.REJECTED_INVALID, f"instance {inst.key or 'master'} twice")
        instances[inst.key] = (inst, rows)
    return _Parsed(method, uid, comps[0].name, comps, instances, resolver)


def submit(calendar: Component, stored: StoredObject | None, ctx: Context) -> Decision:
    """Store the organiser's event and queue the iTIP messages it implies."""
    warnings: list[str] = []
    calendar = calendar.copy()
    parsed = _parse_submission(
        calendar, stored, ctx, warnings, (Method.REQUEST, Method.PUBLISH, Method.CANCEL)
    )
    if isinstance(parsed, Decision):
        parsed.warnings.extend(warnings)
        return parsed
    master = parsed.instances.get("")
    if parsed.method == Method.CANCEL or (master is not None and master[0].status == "CANCELLED"):
        decision = _cancel(calendar, parsed, stored, ctx, bump=True, notify=True)
    else:
        decision = _update(calendar, parsed, stored, ctx, bump=True, notify=True)
    decision.warnings[:0] = warnings
    return decision


def _update(
    calendar: Component,
    parsed: _Parsed,
    stored: StoredObject | None,
    ctx: Context,
    *,
    bump: bool,
    notify: bool,
) -> Decision:
    if stored is None and "" not in parsed.instances:
        return Decision(
            Outcome.REJECTED_INVALID,
            f"UID {parsed.uid!r} is unknown and the submission has no master component",
        )
    plan = _plan_update(
        parsed.instances,
        stored,
        ctx,
        parsed.resolver,
        bump=bump,
        full_replace="" in parsed.instances,
    )
    after_rows = apply_changes(stored, _with_object(plan.changes, stored))
    assert after_rows is not None
    master = after_rows.instances.get("")
    header = _header(
        calendar,
        master,
        stored,
        ctx,
        parsed.uid,
        parsed.component_type,
        master.sequence if master is not None else 0,
    )
    changes: list[Change] = [PutObject(header), *plan.changes]
    after = apply_changes(stored, changes)
    assert after is not None
    outgoing: list[OutgoingMessage] = []
    publish = parsed.method == Method.PUBLISH
    if notify and not publish:
        outgoing = _messages(plan, after, ctx)
    release = [ReleaseHeld(header.owner, header.uid)] if stored is None else []
    counts = Counter(m.method for m in outgoing for _ in m.recipients)
    sent = ", ".join(f"{m} to {n}" for m, n in sorted(counts.items())) or "no messages"
    verb = "created" if stored is None else "updated"
    reason = f"organiser copy {verb} (SEQUENCE {header.sequence}); {sent}"
    if plan.notes:
        reason += "; " + "; ".join(plan.notes)
    return Decision(
        Outcome.APPLIED,
        reason,
        changes=compact(changes),
        outgoing=outgoing,
        release=release,
        warnings=list(parsed.resolver.warnings),
    )


def _with_object(changes: list[Change], stored: StoredObject | None) -> list[Change]:
    if stored is not None:
        return changes
    placeholder = ObjectHeader(
        owner="", uid="", component_type="", role=Role.ORGANIZER, organizer=""
    )
    return [PutObject(placeholder), *changes]


def _messages(plan: _Plan, after: StoredObject, ctx: Context) -> list[OutgoingMessage]:
    sender = normalise(ctx.owner.address)
    out: list[OutgoingMessage] = []
    all_lines = [line for key in sorted(plan.lines) for line in _prefixed(key, plan.lines[key])]

    def message(
        method: str, recipients: Iterable[str], calendar: Component, kind: str, key: str = ""
    ) -> None:
        rcpts = tuple(sorted(recipients))
        if not rcpts:
            return
        lines = all_lines if not key else list(_prefixed(key, plan.lines.get(key, [])))
        out.append(
            OutgoingMessage(
                method=method,
                sender=sender,
                recipients=rcpts,
                calendar=calendar,
                uid=after.header.uid,
                instance_key=key,
                subject_kind=kind,
                summary=after.header.summary,
                auto=False,
                changes=tuple(lines),
            )
        )

    full = set(plan.full)
    invited_full = {a for a in full if a in plan.invited}
    updated_full = full - invited_full
    if full:
        cal = render_request(after, ctx)
        message(Method.REQUEST, invited_full, cal, "invitation")
        message(Method.REQUEST, updated_full, cal, "updated")
    groups: dict[frozenset[str], set[str]] = {}
    for address, partial_keys in plan.partial.items():
        if address not in full:
            groups.setdefault(frozenset(partial_keys), set()).add(address)
    for group_keys, rcpts in sorted(groups.items(), key=lambda kv: sorted(kv[0])):
        ordered = sorted(group_keys)
        cal = render_request(after, ctx, ordered)
        kind = "invitation" if rcpts <= plan.invited else "updated"
        message(Method.REQUEST, rcpts, cal, kind, ordered[0] if len(ordered) == 1 else "")
    add_groups: dict[tuple[str, ...], set[str]] = {}
    for address, new_keys in plan.add.items():
        if address not in full:
            add_groups.setdefault(tuple(new_keys), set()).add(address)
    for add_keys, rcpts in add_groups.items():
        message(Method.ADD, rcpts, _add_calendar(after, add_keys, ctx), "updated")
    cancel_groups: dict[frozenset[str], set[str]] = {}
    for address, cancel_keys in plan.cancel.items():
        cancel_groups.setdefault(frozenset(cancel_keys), set()).add(address)
    for keys, rcpts in cancel_groups.items():
        # Removed from the series: one CANCEL of the series; else one per instance.
        comps: list[Component] = []
        resolver = stored_resolver(after)
        for key in [""] if "" in keys else sorted(keys):
            inst = after.instances.get(key)
            if inst is None and key and "" in after.instances:
                inst = derive_instance(after.instances[""], key, resolver)
            if inst is None:
                continue
            comps.append(
                _cancel_component(inst, [_removed_row(a, key) for a in sorted(rcpts)], ctx)
            )
        cal = render_calendar(after.header, Method.CANCEL, comps, prodid=ctx.prodid)
        key = next(iter(keys)) if len(keys) == 1 else ""
        message(Method.CANCEL, rcpts, cal, "cancelled", key)
    _instance_cancels(plan, after, ctx, message)
    return out


def _instance_cancels(
    plan: _Plan,
    after: StoredObject,
    ctx: Context,
    message: Callable[[str, Iterable[str], Component, str, str], None],
) -> None:
    """CANCELs of removed instances, one component per instance (RFC 5546 3.2.5 b).

    Attendees concerned by the same instances share one message.
    """
    by_address: dict[str, set[str]] = {}
    for key, rcpts in plan.instance_cancel.items():
        for address in rcpts - plan.full:
            # Whoever gets the whole event anyway sees the EXDATE / cancelled
            # override in it; a CANCEL as well would be noise.
            by_address.setdefault(address, set()).add(key)
    groups: dict[frozenset[str], set[str]] = {}
    for address, wanted in by_address.items():
        groups.setdefault(frozenset(wanted), set()).add(address)
    resolver = stored_resolver(after)
    for group_keys, rcpts in sorted(groups.items(), key=lambda kv: sorted(kv[0])):
        comps: list[Component] = []
        for key in sorted(group_keys):
            inst = plan.cancel_instances.get(key) or after.instances.get(key)
            if inst is None and "" in after.instances:
                inst = derive_instance(after.instances[""], key, resolver)
            if inst is None:
                continue
            inst = replace(inst, sequence=plan.cancel_seq.get(key, inst.sequence))
            rows = (
                plan.cancel_rows.get(key)
                or attendees_of(after.attendees, key)
                or attendees_of(after.attendees, "")
            )
            comps.append(_cancel_component(inst, rows, ctx, whole=True))
        if comps:
            cal = render_calendar(after.header, Method.CANCEL, comps, prodid=ctx.prodid)
            ordered = sorted(group_keys)
            message(Method.CANCEL, rcpts, cal, "cancelled", ordered[0] if len(ordered) == 1 else "")


def _prefixed(key: str, lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        yield line if not key else f"Instance {key}: {line}"


def _removed_row(address: str, key: str) -> AttendeeState:
    return AttendeeState(
        instance_key=key, address=address, prop=Property("ATTENDEE", to_uri(address))
    )


def _cancel_component(
    inst: StoredInstance, rows: Iterable[AttendeeState], ctx: Context, *, whole: bool = False
) -> Component:
    comp = render_component(inst, rows)
    comp.set("DTSTAMP", format_utc(ctx.now))
    comp.set("SEQUENCE", str(inst.sequence))
    if whole:
        comp.set("STATUS", "CANCELLED")
    return comp


def _add_calendar(after: StoredObject, keys: Iterable[str], ctx: Context) -> Component:
    """RFC 5546 section 3.2.4: ADD - one component per new instance, no RECURRENCE-ID."""
    master = after.instances[""]
    rows = attendees_of(after.attendees, "")
    resolver = stored_resolver(after)
    comps: list[Component] = []
    for key in keys:
        inst = derive_instance(master, key, resolver)
        comp = render_component(inst, rows)
        comp.remove("RECURRENCE-ID")
        comp.set("DTSTAMP", format_utc(ctx.now))
        comp.set("SEQUENCE", str(master.sequence))
        comps.append(comp)
    return render_calendar(after.header, Method.ADD, comps, prodid=ctx.prodid)


def _cancel(
    calendar: Component,
    parsed: _Parsed,
    stored: StoredObject | None,
    ctx: Context,
    *,
    bump: bool,
    notify: bool,
) -> Decision:
    """Cancel the whole object (master present) or the instances given."""
    owners = owner_addresses(ctx)
    changes: list[Change] = []
    outgoing: list[OutgoingMessage] = []
    whole = "" in parsed.instances
    keys = [""] if whole else sorted(parsed.instances)
    resolver = parsed.resolver
    base = stored
    if base is None:
        if not whole:
            return Decision(
                Outcome.REJECTED_INVALID, f"CANCEL of instances of unknown UID {parsed.uid!r}"
            )
        inst, rows = parsed.instances[""]
        base_header = _header(
            calendar, inst, None, ctx, parsed.uid, parsed.component_type, inst.sequence
        )
        base = StoredObject(header=base_header)
        changes.append(PutObject(base_header))
        changes.append(PutInstance(inst))
        changes.extend(PutAttendee(r) for r in rows)
        base_applied = apply_changes(None, changes)
        assert base_applied is not None
        base = base_applied
    recipients: set[str] = set()
    cancelled: list[StoredInstance] = []
    for key in keys:
        old = base.instances.get(key)
        new_inst, new_rows = parsed.instances[key]
        if old is None:
            master = base.instances.get("")
            if master is None:
                continue
            old = derive_instance(master, key, resolver)
            changes.extend(
                PutAttendee(replace(r, instance_key=key)) for r in attendees_of(base.attendees, "")
            )
        seq = max(new_inst.sequence, old.sequence + 1 if bump else old.sequence)
        comp = old.component.copy()
        comp.set("STATUS", "CANCELLED")
        comp.set("SEQUENCE", str(seq))
        comp.set("DTSTAMP", format_utc(ctx.now))
        inst = replace(
            old, component=comp, sequence=seq, cancelled=True, status="CANCELLED", dtstamp=ctx.now
        )
        changes.append(PutInstance(inst))
        cancelled.append(inst)
        if whole:
            recipients.update(a for (_, a) in base.attendees)
        else:
            recipients.update(r.address for r in attendees_of(base.attendees, key))
            recipients.update(r.address for r in attendees_of(base.attendees, ""))
            recipients.update(r.address for r in new_rows)
    after = apply_changes(base, changes)
    assert after is not None
    if whole:
        master = after.instances[""]
        header = replace(after.header, sequence=master.sequence, status="CANCELLED")
        changes.insert(0, PutObject(header))
        after = apply_changes(after, [PutObject(header)])
        assert after is not None
    recipients -= owners
    if notify and recipients:
        comps = [
            _cancel_component(i, attendees_of(after.attendees, i.key), ctx, whole=True)
            for i in cancelled
        ]
        outgoing.append(
            OutgoingMessage(
                method=Method.CANCEL,
                sender=normalise(ctx.owner.address),
                recipients=tuple(sorted(recipients)),
                calendar=render_calendar(after.header, Method.CANCEL, comps, prodid=ctx.prodid),
                uid=after.header.uid,
                instance_key="" if whole or len(keys) > 1 else keys[0],
                subject_kind="cancelled",
                summary=after.header.summary,
                auto=False,
                changes=("Event cancelled",)
                if whole
                else tuple(f"Instance {k} cancelled" for k in keys),
            )
        )
    what = "the event" if whole else "instance(s) " + ", ".join(keys)
    release = [ReleaseHeld(after.header.owner, after.header.uid)] if stored is None else []
    return Decision(
        Outcome.APPLIED,
        f"cancelled {what} (SEQUENCE {cancelled[0].sequence if cancelled else 0}); "
        f"CANCEL to {len(recipients) if notify else 0}",
        changes=compact(changes),
        outgoing=outgoing,
        release=release,
    )


# --- outbound relay ------------------------------------------------------------------------


def record_outbound(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    """Record a REQUEST/CANCEL/ADD/PUBLISH the local organiser sent through the gateway.

    The organiser's client produced the message, so its SEQUENCE is kept as is (the
    attendees get exactly that) and no message is generated.
    """
    warnings: list[str] = list(msg.warnings)
    calendar = Component("VCALENDAR", [p.copy() for p in msg.calendar.properties])
    calendar.components = [c.copy() for c in (*msg.timezones, *msg.components)]
    if msg.method == Method.ADD:
        return _record_add(calendar, msg, stored, ctx, warnings)
    parsed = _parse_submission(
        calendar, stored, ctx, warnings, (Method.REQUEST, Method.PUBLISH, Method.CANCEL)
    )
    if isinstance(parsed, Decision):
        parsed.warnings[:0] = warnings
        return parsed
    if stored is not None:
        for key, (inst, _) in parsed.instances.items():
            old = stored.instances.get(key)
            if (
                old is not None
                and compare_versions(inst.sequence, inst.dtstamp, old.sequence, old.dtstamp) < 0
            ):
                return Decision(
                    Outcome.IGNORED_STALE,
                    f"outbound {msg.method} (SEQUENCE {inst.sequence}) is older than the "
                    f"recorded copy (SEQUENCE {old.sequence}) (RFC 5546 section 2.1.5)",
                    warnings=warnings,
                )
    if msg.method == Method.CANCEL:
        removal = _attendee_removal(parsed, stored)
        if removal is not None:
            removal.warnings[:0] = warnings
            return removal
        decision = _cancel(calendar, parsed, stored, ctx, bump=False, notify=False)
    else:
        decision = _update(calendar, parsed, stored, ctx, bump=False, notify=False)
    decision.reason = f"outbound {msg.method} recorded: {decision.reason}"
    decision.warnings[:0] = warnings
    return decision


def _attendee_removal(parsed: _Parsed, stored: StoredObject | None) -> Decision | None:
    """A CANCEL naming only some attendees removes them (RFC 5546 section 4.2.10)."""
    if stored is None:
        return None
    changes: list[Change] = []
    for key, (inst, rows) in parsed.instances.items():
        current = {r.address for r in attendees_of(stored.attendees, key)}
        named = {r.address for r in rows}
        if inst.status == "CANCELLED" or not named or not current or named >= current:
            return None
        changes.extend(DeleteAttendee(key, a) for a in sorted(named & current))
    removed = sorted({c.address for c in changes if isinstance(c, DeleteAttendee)})
    return Decision(
        Outcome.APPLIED,
        f"outbound CANCEL recorded: removed {', '.join(removed)}",
        changes=changes,
    )


def _record_add(
    calendar: Component,
    msg: ITipMessage,
    stored: StoredObject | None,
    ctx: Context,
    warnings: list[str],
) -> Decision:
    """RFC 5546 section 3.2.4: each ADD component is a new instance of the series."""
    if stored is None or "" not in stored.instances:
        return Decision(
            Outcome.IGNORED_UNKNOWN,
            f"outbound ADD for unknown UID {msg.uid!r}: nothing to add to",
            warnings=warnings,
        )
    resolver = stored_resolver(stored, calendar)
    master = stored.instances[""]
    mcomp = master.component.copy()
    changes: list[Change] = []
    seq = master.sequence
    for comp in msg.components:
        start = comp.get("DTSTART")
        if start is None:
            continue
        try:
            key = instance_key(resolver.value(start))
        except ValueError as exc:
            return Decision(Outcome.REJECTED_INVALID, f"ADD with unreadable DTSTART: {exc}")
        add = comp.copy()
        rid = Property("RECURRENCE-ID", start.value, {k: list(v) for k, v in start.params.items()})
        add.properties.insert(0, rid)
        inst, rows = split_component(add, resolver, warnings)
        seq = max(seq, inst.sequence)
        changes.append(PutInstance(inst))
        changes.extend(PutAttendee(r) for r in rows)
        mcomp.add(Property("RDATE", start.value, {k: list(v) for k, v in start.params.items()}))
        if key in stored.instances:
            warnings.append(f"ADD of instance {key}, which already exists; replaced")
    mcomp.set("SEQUENCE", str(seq))
    changes.insert(0, PutInstance(replace(master, component=mcomp, sequence=seq)))
    changes.insert(0, PutObject(replace(stored.header, sequence=seq, is_recurring=True)))
    return Decision(
        Outcome.APPLIED,
        f"outbound ADD recorded: {len(changes) - 2} change(s), SEQUENCE {seq}",
        changes=changes,
        warnings=warnings,
    )


# --- COUNTER answers -------------------------------------------------------------------------


def _counter_component(held: HeldItem) -> tuple[Component, ITipMessage] | str:
    result = parse_itip(held.payload)
    if not result.messages:
        return f"held COUNTER #{held.id} is unreadable: {'; '.join(result.problems)}"
    msg = result.messages[0]
    return msg.components[0], msg


def counter_accept(stored: StoredObject, held_counter: HeldItem, ctx: Context) -> Decision:
    """Turn a held COUNTER into a new REQUEST (RFC 5546 sections 3.2.7, 3.2.2.1)."""
    got = _counter_component(held_counter)
    if isinstance(got, str):
        return Decision(Outcome.REJECTED_INVALID, got)
    proposal, msg = got
    key = held_counter.instance_key
    cal = render_request(stored, ctx)
    cal.remove("METHOD")
    known = {(z.value("TZID") or "").strip() for z in cal.sub("VTIMEZONE")}
    for vtz in msg.timezones:
        if (vtz.value("TZID") or "").strip() not in known:
            cal.components.insert(0, vtz.copy())
    target = _component_for(cal, stored, key, ctx)
    if target is None:
        return Decision(Outcome.REJECTED_INVALID, f"instance {key} of the COUNTER is unknown")
    for name in _COUNTER_PROPS:
        props = proposal.get_all(name)
        if not props:
            continue
        target.remove(name)
        target.properties.extend(p.copy() for p in props)
        if name == "DTEND":
            target.remove("DURATION")
        elif name == "DURATION":
            target.remove("DTEND")
    decision = submit(cal, stored, ctx)
    if decision.outcome != Outcome.APPLIED:
        return decision
    decision.changes.append(ResolveHeld(held_counter.id, "accepted"))
    decision.reason = f"COUNTER #{held_counter.id} from {held_counter.sender} accepted: " + (
        decision.reason
    )
    return decision


def _component_for(
    cal: Component, stored: StoredObject, key: str, ctx: Context
) -> Component | None:
    resolver = stored_resolver(stored, cal)
    for comp in cal.components:
        if comp.name not in SCHEDULING:
            continue
        rid = comp.get("RECURRENCE-ID")
        if (rid is None and key == "") or (
            rid is not None and instance_key(resolver.value(rid)) == key
        ):
            return comp
    master = stored.instances.get("")
    if not key or master is None:
        return None
    inst = derive_instance(master, key, resolver)
    comp = render_component(inst, attendees_of(stored.attendees, ""))
    comp.set("DTSTAMP", format_utc(ctx.now))
    cal.components.append(comp)
    return comp


def counter_decline(
    stored: StoredObject, held_counter: HeldItem, ctx: Context, comment: str = ""
) -> Decision:
    """Answer a held COUNTER with DECLINECOUNTER to its proposer (RFC 5546 3.2.8)."""
    got = _counter_component(held_counter)
    if isinstance(got, str):
        return Decision(Outcome.REJECTED_INVALID, got)
    proposal, _ = got
    comp = Component(proposal.name)
    comp.add(Property("UID", stored.header.uid))
    rid = proposal.get("RECURRENCE-ID")
    if rid is not None:
        comp.add(rid.copy())
    comp.add(Property("SEQUENCE", proposal.value("SEQUENCE") or "0"))
    comp.add(Property("DTSTAMP", format_utc(ctx.now)))
    organizer = Property("ORGANIZER", to_uri(stored.header.organizer))
    comp.add(organizer)
    line = next(
        (
            p.copy()
            for p in proposal.get_all("ATTENDEE")
            if normalise(p.value) == held_counter.sender
        ),
        Property("ATTENDEE", to_uri(held_counter.sender)),
    )
    comp.add(line)
    if comment:
        comp.add(Property("COMMENT", escape_text(comment)))
    calendar = render_calendar(stored.header, Method.DECLINECOUNTER, [comp], prodid=ctx.prodid)
    return Decision(
        Outcome.APPLIED,
        f"COUNTER #{held_counter.id} from {held_counter.sender} declined; DECLINECOUNTER sent "
        "(RFC 5546 section 3.2.8)",
        changes=[ResolveHeld(held_counter.id, "declined")],
        outgoing=[
            OutgoingMessage(
                method=Method.DECLINECOUNTER,
                sender=normalise(ctx.owner.address),
                recipients=(held_counter.sender,),
                calendar=calendar,
                uid=stored.header.uid,
                instance_key=held_counter.instance_key,
                subject_kind="declinecounter",
                summary=stored.header.summary,
                auto=False,
                changes=(comment,) if comment else (),
            )
        ],
    )
