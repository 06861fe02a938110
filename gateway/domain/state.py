"""Conversions between iCalendar components and the stored row model.

Both roles need the same two directions:

* :func:`split_component` turns a scheduling component into a
  :class:`~gateway.domain.model.StoredInstance` (the component text without its
  ATTENDEE lines) and one :class:`~gateway.domain.model.AttendeeState` per ATTENDEE;
* :func:`render_component` / :func:`render_calendar` put them back together for
  REFRESH answers, updates and exports.

Ordering of versions (RFC 5546 section 2.1.5) lives here too, so every code path
compares SEQUENCE and DTSTAMP the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from gateway.domain.addresses import normalise, to_uri
from gateway.domain.ical import Component, Property
from gateway.domain.model import AttendeeState, ObjectHeader, StoredInstance
from gateway.domain.timeutil import TzResolver, instance_key, parse_duration, to_utc

__all__ = [
    "MAX_SEQUENCE",
    "PERCENT_PARAM",
    "attendee_from_prop",
    "attendee_prop",
    "compare_versions",
    "dtstamp_of",
    "instance_key_of",
    "percent_complete",
    "render_calendar",
    "render_component",
    "sequence_of",
    "split_component",
    "with_percent_complete",
]

# RFC 5546 3.4.3: an attendee's VTODO REPLY may carry PERCENT-COMPLETE, their own
# progress.  The organiser copy keeps it per attendee and instance as a private
# parameter of the stored ATTENDEE line (the row's text is persisted as is), and
# :func:`attendee_prop` strips it so it never leaks into outgoing messages.
PERCENT_PARAM = "X-IMIP-GATEWAY-PERCENT-COMPLETE"

# SEQUENCE is an INTEGER (RFC 5545 section 3.8.7.4: 32-bit), but Google has sent
# 1407317367304.  We keep what fits a signed 64-bit column and clamp the rest.
MAX_SEQUENCE = 2**63 - 1


def sequence_of(comp: Component, warnings: list[str] | None = None) -> int:
    """SEQUENCE of a component; absent means 0 (RFC 5545 section 3.8.7.4)."""
    raw = comp.value("SEQUENCE")
    if raw is None or not raw.strip():
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        if warnings is not None:
            warnings.append(f"SEQUENCE {raw[:20]!r} is not an integer; read as 0")
        return 0
    if value < 0:
        if warnings is not None:
            warnings.append(f"negative SEQUENCE {value}; read as 0")
        return 0
    return min(value, MAX_SEQUENCE)


def dtstamp_of(
    comp: Component, resolver: TzResolver, warnings: list[str] | None = None
) -> datetime | None:
    """DTSTAMP as an aware UTC datetime (RFC 5545 section 3.8.7.2), or None."""
    prop = comp.get("DTSTAMP")
    if prop is None:
        return None
    try:
        return to_utc(resolver.value(prop))
    except ValueError:
        if warnings is not None:
            warnings.append(f"DTSTAMP {prop.value[:30]!r} is not a date-time; ignored")
        return None


def compare_versions(
    seq_a: int, stamp_a: datetime | None, seq_b: int, stamp_b: datetime | None
) -> int:
    """Order two versions of a component: >0 when A is newer, 0 same, <0 older.

    RFC 5546 section 2.1.5: the higher SEQUENCE wins; with equal SEQUENCE the later
    DTSTAMP wins.  A missing DTSTAMP is older than any present one.
    """
    if seq_a != seq_b:
        return 1 if seq_a > seq_b else -1
    if stamp_a == stamp_b:
        return 0
    if stamp_a is None:
        return -1
    if stamp_b is None:
        return 1
    return 1 if stamp_a > stamp_b else -1


def instance_key_of(comp: Component, resolver: TzResolver) -> str:
    """The instance key of a component: "" for a master, else its RECURRENCE-ID."""
    rid = comp.get("RECURRENCE-ID")
    if rid is None:
        return ""
    return instance_key(resolver.value(rid))


def _addresses(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in values:
        # DELEGATED-TO values are comma-separated inside one parameter; some clients
        # send one quoted string holding several.
        for piece in raw.split(","):
            addr = normalise(piece)
            if addr and addr not in out:
                out.append(addr)
    return tuple(out)


def attendee_from_prop(prop: Property, key: str) -> AttendeeState:
    """Build the stored state of one ATTENDEE line (RFC 5545 section 3.8.4.1)."""
    param = prop.param
    param_list = prop.param_list
    delegated_to = param_list("DELEGATED-TO")
    delegated_from = param_list("DELEGATED-FROM")
    member = param_list("MEMBER")
    return AttendeeState(
        instance_key=key,
        address=normalise(prop.value),
        prop=prop.copy(),  # copy-on-write: cheap while neither side changes it
        partstat=(param("PARTSTAT") or "NEEDS-ACTION").upper(),
        role=(param("ROLE") or "REQ-PARTICIPANT").upper(),
        rsvp=(param("RSVP") or "").upper() == "TRUE",
        cutype=(param("CUTYPE") or "INDIVIDUAL").upper(),
        delegated_to=_addresses(delegated_to) if delegated_to else (),
        delegated_from=_addresses(delegated_from) if delegated_from else (),
        sent_by=normalise(param("SENT-BY")),
        member=_addresses(member) if member else (),
        schedule_status=param("SCHEDULE-STATUS") or "",
    )


def attendee_prop(att: AttendeeState) -> Property:
    """The ATTENDEE line for ``att``: its stored line with the current state applied.

    Parameters the attendee or organiser set that we do not model (CN, LANGUAGE,
    X- parameters) are kept as received.
    """
    prop = att.prop.copy()
    if not prop.value.lower().startswith("mailto:") and "@" in att.address:
        prop.value = to_uri(att.address)
    prop.set_param("PARTSTAT", att.partstat)
    prop.set_param(
        "ROLE", att.role if att.role != "REQ-PARTICIPANT" or prop.has_param("ROLE") else None
    )
    prop.set_param("RSVP", "TRUE" if att.rsvp else None)
    if att.cutype != "INDIVIDUAL" or prop.has_param("CUTYPE"):
        prop.set_param("CUTYPE", att.cutype)
    prop.set_param("DELEGATED-TO", [to_uri(a) for a in att.delegated_to] or None)
    prop.set_param("DELEGATED-FROM", [to_uri(a) for a in att.delegated_from] or None)
    prop.set_param("SENT-BY", to_uri(att.sent_by) if att.sent_by else None)
    prop.set_param("MEMBER", [to_uri(a) for a in att.member] or None)
    prop.set_param("SCHEDULE-STATUS", att.schedule_status or None)
    prop.set_param(PERCENT_PARAM, None)
    return prop


def percent_complete(att: AttendeeState) -> int | None:
    """The attendee's last reported PERCENT-COMPLETE (RFC 5546 3.4.3), or None."""
    raw = att.prop.param(PERCENT_PARAM)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if 0 <= value <= 100 else None


def with_percent_complete(prop: Property, value: int) -> Property:
    """``prop`` (a copy) recording ``value`` as the attendee's progress."""
    out = prop.copy()
    out.set_param(PERCENT_PARAM, str(value))
    return out


def _span(comp: Component, resolver: TzResolver) -> tuple[datetime | None, datetime | None]:
    """UTC start and end of a component (DTEND, DUE or DURATION; RFC 5545 3.6.1)."""
    start_prop = comp.get("DTSTART")
    if start_prop is None:
        return None, None
    try:
        start_value = resolver.value(start_prop)
    except ValueError:
        return None, None
    start = to_utc(start_value)
    end: datetime | None = None
    end_prop = comp.get("DTEND") or comp.get("DUE")
    try:
        if end_prop is not None:
            end = to_utc(resolver.value(end_prop))
        elif comp.get("DURATION") is not None:
            end = start + parse_duration(comp.value("DURATION") or "")
        elif not isinstance(start_value, datetime):
            end = start + timedelta(days=1)  # an all-day event lasts the day
        else:
            end = start
    except ValueError:
        end = start
    return start, end


def split_component(
    comp: Component, resolver: TzResolver, warnings: list[str] | None = None
) -> tuple[StoredInstance, list[AttendeeState]]:
    """Split a scheduling component into its instance row and its attendee rows."""
    key = instance_key_of(comp, resolver)
    rid = comp.get("RECURRENCE-ID")
    body = Component(comp.name, [p.copy() for p in comp.properties if p.name != "ATTENDEE"])
    body.components = [c.copy() for c in comp.components]
    start, end = _span(comp, resolver)
    instance = StoredInstance(
        key=key,
        component=body,
        sequence=sequence_of(comp, warnings),
        dtstamp=dtstamp_of(comp, resolver, warnings),
        this_and_future=bool(rid and (rid.param("RANGE") or "").upper() == "THISANDFUTURE"),
        cancelled=(comp.value("STATUS") or "").upper() == "CANCELLED",
        start=start,
        end=end,
        status=(comp.value("STATUS") or "").upper(),
        transp=(comp.value("TRANSP") or "").upper(),
    )
    attendees: list[AttendeeState] = []
    seen: set[str] = set()
    for prop in comp.get_all("ATTENDEE"):
        att = attendee_from_prop(prop, key)
        if not att.address or att.address in seen:
            # Duplicate ATTENDEE lines for one address: the first wins (lenient).
            if warnings is not None and att.address:
                warnings.append(f"duplicate ATTENDEE {att.address}; kept the first")
            continue
        seen.add(att.address)
        attendees.append(att)
    return instance, attendees


def render_component(instance: StoredInstance, attendees: Iterable[AttendeeState]) -> Component:
    """Re-assemble one component: its stored text plus its attendees' current lines."""
    comp = instance.component.copy()
    lines = [attendee_prop(a) for a in attendees]
    # Attendees go after ORGANIZER when there is one, which is where clients put them.
    idx = next((i + 1 for i, p in enumerate(comp.properties) if p.name == "ORGANIZER"), None)
    if idx is None:
        comp.properties.extend(lines)
    else:
        comp.properties[idx:idx] = lines
    return comp


def render_calendar(
    header: ObjectHeader,
    method: str | None,
    components: Iterable[Component],
    *,
    prodid: str = "-//imip-gateway//imip-gateway 0.1//EN",
) -> Component:
    """A VCALENDAR carrying ``components`` with METHOD, PRODID, VERSION, VTIMEZONEs."""
    cal = Component("VCALENDAR")
    cal.add(Property("PRODID", prodid))
    cal.add(Property("VERSION", "2.0"))
    if method:
        cal.add(Property("METHOD", method))
    skip = {"PRODID", "VERSION", "METHOD"}
    for prop in header.calendar_props:
        if prop.name not in skip:
            cal.add(prop.copy())
    comps = list(components)
    used = _tzids_used(comps)
    for vtz in header.timezones:
        if (vtz.value("TZID") or "").strip() in used:
            cal.components.append(vtz.copy())
    cal.components.extend(comps)
    return cal


def _tzids_used(components: Iterable[Component]) -> set[str]:
    used: set[str] = set()
    for comp in components:
        for sub in comp.walk():
            for prop in sub.properties:
                tzid = prop.param("TZID")
                if tzid:
                    used.add(tzid.strip())
    return used


def attendees_of(
    attendees: Mapping[tuple[str, str], AttendeeState], key: str
) -> list[AttendeeState]:
    """The attendee rows of one instance, in stable (address) order."""
    return sorted((a for (k, _), a in attendees.items() if k == key), key=lambda a: a.address)


def with_partstat(att: AttendeeState, partstat: str) -> AttendeeState:
    """A copy of ``att`` with a new PARTSTAT (RSVP cleared once answered)."""
    return replace(att, partstat=partstat.upper())
