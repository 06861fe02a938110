"""Turn the engine's outgoing iTIP messages into iMIP mail (RFC 6047).

The engine decides *what* to send as calendar data; this module adds what a human
reading the mail needs (subject, a plain-text summary of what, when, where, who and
what changed) and hands both to :func:`gateway.mime.compose.compose_imip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import cast, get_args

from gateway.domain.addresses import normalise
from gateway.domain.ical import Component, serialize
from gateway.domain.message import SCHEDULING_COMPONENTS
from gateway.domain.model import OutgoingMessage, UserPolicy
from gateway.domain.timeutil import TzResolver
from gateway.mime.compose import (
    ComposedMessage,
    ComposeRequest,
    EventSummary,
    SubjectKind,
    compose_imip,
)

__all__ = ["compose_outgoing", "subject_kind_for", "summary_of"]

_BY_METHOD: dict[str, str] = {
    "REQUEST": "invitation",
    "CANCEL": "cancelled",
    "REFRESH": "refresh",
    "COUNTER": "counter",
    "DECLINECOUNTER": "declinecounter",
    "PUBLISH": "published",
    "ADD": "added",
}
_BY_PARTSTAT: dict[str, str] = {
    "ACCEPTED": "accepted",
    "DECLINED": "declined",
    "TENTATIVE": "tentative",
    "DELEGATED": "delegated",
}
# The subject families compose knows; the engine may name one directly.
_KINDS: frozenset[str] = frozenset(get_args(SubjectKind))


def _first_component(calendar: Component) -> Component | None:
    for comp in calendar.components:
        if comp.name in SCHEDULING_COMPONENTS:
            return comp
    return None


def _partstat_of(comp: Component | None, sender: str) -> str | None:
    if comp is None:
        return None
    for prop in comp.get_all("ATTENDEE"):
        if normalise(prop.value) == normalise(sender):
            return (prop.param("PARTSTAT") or "NEEDS-ACTION").upper()
    atts = comp.get_all("ATTENDEE")
    if len(atts) == 1:  # a REPLY names exactly one attendee (RFC 5546 section 3.2.3)
        return (atts[0].param("PARTSTAT") or "NEEDS-ACTION").upper()
    return None


def subject_kind_for(out: OutgoingMessage) -> SubjectKind:
    """The subject line family for an outgoing message."""
    if out.subject_kind in _KINDS:
        return cast("SubjectKind", out.subject_kind)
    method = out.method.upper()
    comp = _first_component(out.calendar)
    if method == "REPLY":
        if comp is not None and comp.name == "VFREEBUSY":
            return "freebusy"
        return cast(
            "SubjectKind", _BY_PARTSTAT.get(_partstat_of(comp, out.sender) or "", "accepted")
        )
    if method == "REQUEST" and comp is not None and comp.name == "VFREEBUSY":
        return "freebusy"
    return cast("SubjectKind", _BY_METHOD.get(method, "invitation"))


def summary_of(out: OutgoingMessage, changes: Sequence[str] = ()) -> EventSummary:
    """The human summary of the calendar being sent."""
    comp = _first_component(out.calendar)
    if comp is None:
        return EventSummary(title=out.summary or "(calendar)", changes=list(changes))
    resolver = TzResolver.for_calendar(out.calendar)
    start: datetime | date | None = None
    end: datetime | date | None = None
    tzname: str | None = None
    dtstart = comp.get("DTSTART")
    if dtstart is not None:
        try:
            start = resolver.value(dtstart)
            tzname = dtstart.param("TZID") or ("UTC" if dtstart.value.endswith("Z") else None)
        except ValueError:
            start = None
    dtend = comp.get("DTEND") or comp.get("DUE")
    if dtend is not None:
        try:
            end = resolver.value(dtend)
        except ValueError:
            end = None
    rid = comp.get("RECURRENCE-ID")
    note = ""
    if rid is not None:
        note = "This concerns one occurrence of a recurring event."
    elif comp.get("RRULE") is not None:
        note = "This is a recurring event."
    return EventSummary(
        title=comp.text("SUMMARY") or out.summary or "(no title)",
        start=start,
        end=end,
        timezone_name=tzname,
        location=comp.text("LOCATION"),
        organizer=normalise(comp.value("ORGANIZER")),
        attendees=[normalise(p.value) for p in comp.get_all("ATTENDEE")],
        changes=list(changes),
        partstat=_partstat_of(comp, out.sender) if out.method.upper() == "REPLY" else None,
        recurrence_note=note,
    )


def compose_outgoing(
    out: OutgoingMessage,
    *,
    recipient: str,
    owner: UserPolicy,
    now: datetime,
    message_id: str,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    marker: str = "1",
) -> ComposedMessage:
    """Compose the iMIP mail for one recipient of ``out``."""
    refs = [*references]
    if in_reply_to and in_reply_to not in refs:
        refs.append(in_reply_to)
    sender_addr = normalise(out.sender) or owner.address
    request = ComposeRequest(
        from_address=sender_addr,
        from_name=owner.display_name if sender_addr == owner.address else "",
        to=[("", normalise(recipient))],
        method=out.method.upper(),
        ical_text=serialize(out.calendar),
        summary=summary_of(out, out.changes),
        subject_kind=subject_kind_for(out),
        date=now,
        in_reply_to=in_reply_to,
        references=refs,
        message_id=message_id,
        auto_submitted="auto-replied" if out.auto and out.answering else "auto-generated",
        gateway_marker=marker,
    )
    return compose_imip(request)
