"""From a calendar part's text to iTIP messages.

RFC 5546 section 1.4/3: an iTIP message is one VCALENDAR with a METHOD whose
scheduling components all share one UID (overrides differ by RECURRENCE-ID).  Real
mail sometimes carries several VCALENDARs in one part, or one VCALENDAR with several
UIDs (iCal 1.0 sent 5 VEVENTs); each UID becomes its own :class:`ITipMessage` so each
gets its own outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.domain.ical import Component, ICalError, parse
from gateway.domain.model import METHODS, ITipMessage

__all__ = ["SCHEDULING_COMPONENTS", "ParseResult", "parse_itip"]

SCHEDULING_COMPONENTS = ("VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY")


@dataclass
class ParseResult:
    """Messages found in one calendar part, and what made parts of it unusable."""

    messages: list[ITipMessage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each is an outcome reason
    warnings: list[str] = field(default_factory=list)


def parse_itip(text: str, *, mime_method: str | None = None) -> ParseResult:
    """Parse ``text`` into iTIP messages.

    ``mime_method`` (the Content-Type ``method=`` parameter) is used only when the
    calendar has no METHOD at all; RFC 6047 section 2.4 makes the two agree, and when
    they do not the calendar's METHOD wins (the extractor records the mismatch).
    Never raises on bad input: problems are returned as reasons.
    """
    result = ParseResult()
    try:
        roots = parse(text, result.warnings)
    except ICalError as exc:
        result.problems.append(f"invalid iCalendar: {exc}")
        return result
    calendars = [c for c in roots if c.name == "VCALENDAR"]
    if not calendars:
        result.problems.append("no VCALENDAR object in the calendar part")
        return result
    for cal in calendars:
        _split_calendar(cal, mime_method, result)
    return result


def _split_calendar(cal: Component, mime_method: str | None, result: ParseResult) -> None:
    method = (cal.value("METHOD") or "").strip().upper()
    if not method and mime_method:
        method = mime_method.strip().upper()
        result.warnings.append(f"VCALENDAR has no METHOD; used MIME method={method}")
    if not method:
        # RFC 5546 section 3: no METHOD means this is not an iTIP message at all
        # (a plain calendar attachment).
        result.problems.append("VCALENDAR has no METHOD: not an iTIP scheduling message")
        return
    if method not in METHODS:
        result.problems.append(f"unknown METHOD {method!r}")
        return
    timezones = cal.sub("VTIMEZONE")
    by_uid: dict[str, list[Component]] = {}
    types: dict[str, str] = {}
    for comp in cal.components:
        if comp.name not in SCHEDULING_COMPONENTS:
            continue
        uid = (comp.value("UID") or "").strip()
        if not uid and comp.name == "VFREEBUSY":
            uid = ""  # VFREEBUSY REQUEST/REPLY may lack a UID (RFC 5546 section 3.3)
        by_uid.setdefault(uid, []).append(comp)
        types.setdefault(uid, comp.name)
    if not by_uid:
        result.problems.append(f"METHOD:{method} calendar holds no VEVENT/VTODO/VJOURNAL/VFREEBUSY")
        return
    for uid, comps in by_uid.items():
        kinds = {c.name for c in comps}
        if len(kinds) > 1:
            result.problems.append(
                f"UID {uid!r} is used by several component types {sorted(kinds)}"
            )
            continue
        result.messages.append(
            ITipMessage(
                method=method,
                component_type=types[uid],
                uid=uid,
                calendar=cal,
                components=comps,
                timezones=timezones,
                warnings=list(result.warnings),
            )
        )
