"""RFC 5546 section 3 restriction tables, as data, and the checks that apply them.

Every iTIP message is checked against the table for its (METHOD, component) pair
(sections 3.2.1-3.2.8 VEVENT, 3.3.1-3.3.3 VFREEBUSY, 3.4.1-3.4.8 VTODO, 3.5.1-3.5.3
VJOURNAL) and the common tables (3.1.1 VCALENDAR, 3.1.3 VALARM).  A violation carries
the section 3.6 REQUEST-STATUS code that names it, so a reply that is owed can say
what was wrong ("3.11;Required component or property missing;DTSTART").

Presence column (section 3): "1" must occur once, "1+" at least once, "0" must not
occur, "0 or 1" at most once, "0+" any number.  The tables were transcribed from the
RFC text by a script and are kept as data, one entry per (method, component).

Leniency (issue 3 interop list), each chosen so the RFC's intent is unharmed:

* a missing SUMMARY/PRIORITY/DESCRIPTION ("can be null") or DTSTAMP (ordering falls
  back to SEQUENCE, section 2.1.5) is a warning, as is a missing SEQUENCE on CANCEL,
  COUNTER and DECLINECOUNTER (absent means 0), a PUBLISH without ORGANIZER (Outlook,
  GoToMeeting: stored read-only), a REPLY without ORGANIZER (Outlook: the organiser
  side takes it from the stored copy), a VTODO without DTSTART and a VFREEBUSY
  without UID;
* a duplicated "0 or 1" property (Google's two SUMMARYs) is a warning - the first one
  counts - except for the properties that identify or place an instance (UID,
  DTSTART, RECURRENCE-ID, ...), where a guess could act on the wrong instance;
* a forbidden ("0") property is ignored with a warning (VALARM in a REPLY changes
  nothing), except where it would change which instances the message means (RRULE,
  RDATE, EXDATE, RECURRENCE-ID in ADD, section 3.2.4);
* STATUS outside the listed values is a warning (Google puts STATUS:CANCELLED
  overrides inside REQUESTs); a missing VTIMEZONE is a warning because the resolver
  knows IANA and Windows names (:mod:`gateway.domain.timeutil`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from gateway.domain.addresses import normalise
from gateway.domain.ical import Component, Property, escape_text
from gateway.domain.model import ITipMessage
from gateway.domain.timeutil import TzResolver, parse_duration, to_utc

__all__ = [
    "STATUS_TEXT",
    "TABLES",
    "Table",
    "Violation",
    "request_status",
    "table_for",
    "validate",
    "validated",
]

# Section 3.6: short return status codes and their descriptions.
STATUS_TEXT: dict[str, str] = {
    "2.0": "Success",
    "2.1": "Success, but fallback taken on one or more property values",
    "2.2": "Success; invalid property ignored",
    "2.3": "Success; invalid property parameter ignored",
    "2.4": "Success; unknown, non-standard property ignored",
    "2.5": "Success; unknown, non-standard property value ignored",
    "2.6": "Success; invalid calendar component ignored",
    "2.7": "Success; request forwarded to Calendar User",
    "2.8": "Success; repeating event ignored. Scheduled as a single component",
    "2.9": "Success; truncated end date time to date boundary",
    "2.10": "Success; repeating VTODO ignored. Scheduled as a single VTODO",
    "2.11": "Success; unbounded RRULE clipped at some finite number of instances",
    "3.0": "Invalid property name",
    "3.1": "Invalid property value",
    "3.2": "Invalid property parameter",
    "3.3": "Invalid property parameter value",
    "3.4": "Invalid calendar component sequence",
    "3.5": "Invalid date or time",
    "3.6": "Invalid rule",
    "3.7": "Invalid Calendar User",
    "3.8": "No authority",
    "3.9": "Unsupported version",
    "3.10": "Request entity too large",
    "3.11": "Required component or property missing",
    "3.12": "Unknown component or property found",
    "3.13": "Unsupported component or property found",
    "3.14": "Unsupported capability",
    "4.0": "Event conflict. Date/time is busy",
    "5.0": "Request not supported",
    "5.1": "Service unavailable",
    "5.2": "Invalid calendar service",
    "5.3": "No scheduling support for user",
}


def request_status(code: str, data: str = "") -> str:
    """A REQUEST-STATUS value ``code;description[;exception data]`` (RFC 5545 3.8.8.3).

    The description and data are TEXT, so ``;`` and ``,`` inside them are escaped.
    """
    text = f"{code};{escape_text(STATUS_TEXT.get(code, 'Unknown status'))}"
    return f"{text};{escape_text(data)}" if data else text


@dataclass(frozen=True, slots=True)
class Violation:
    """One breach of a restriction table: REQUEST-STATUS ``code``, the property (or
    component) concerned and a human-readable ``text`` for the journal."""

    code: str
    property: str
    text: str

    def request_status(self) -> str:
        """The REQUEST-STATUS value to send back for this violation (section 3.6)."""
        return request_status(self.code, self.property)


@dataclass(frozen=True, slots=True)
class Table:
    """One restriction table: presence of each property inside the component."""

    section: str
    count: str  # presence of the component itself: "1" or "1+"
    vtimezone: str
    valarm: str
    one: frozenset[str]
    one_plus: frozenset[str]
    at_most_one: frozenset[str]
    many: frozenset[str]
    never: frozenset[str]
    status: tuple[str, ...] | None
    fatal_never: frozenset[str]


def _table(
    section: str,
    *,
    count: str,
    vtimezone: str,
    valarm: str,
    one: str = "",
    one_plus: str = "",
    at_most_one: str = "",
    many: str = "",
    never: str = "",
    status: tuple[str, ...] | None = None,
    fatal_never: str = "",
) -> Table:
    return Table(
        section=section,
        count=count,
        vtimezone=vtimezone,
        valarm=valarm,
        one=frozenset(one.split()),
        one_plus=frozenset(one_plus.split()),
        at_most_one=frozenset(at_most_one.split()),
        many=frozenset(many.split()),
        never=frozenset(never.split()),
        status=status,
        fatal_never=frozenset(fatal_never.split()),
    )


# (METHOD, component) -> table, transcribed from RFC 5546 sections 3.2-3.5.
TABLES: dict[tuple[str, str], Table] = {
    ("PUBLISH", "VEVENT"): _table(
        "3.2.1",
        count="1+",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER SUMMARY UID",
        at_most_one=(
            "RECURRENCE-ID SEQUENCE CLASS CONTACT CREATED DESCRIPTION DTEND DURATION GEO "
            "LAST-MODIFIED LOCATION PRIORITY RRULE STATUS TRANSP URL"
        ),
        many="ATTACH CATEGORIES COMMENT EXDATE RDATE RELATED-TO RESOURCES",
        never="ATTENDEE REQUEST-STATUS",
        status=("TENTATIVE", "CONFIRMED", "CANCELLED"),
    ),
    ("REQUEST", "VEVENT"): _table(
        "3.2.2",
        count="1+",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER SUMMARY UID",
        one_plus="ATTENDEE",
        at_most_one=(
            "SEQUENCE CLASS CREATED DESCRIPTION DTEND DURATION GEO LAST-MODIFIED LOCATION "
            "PRIORITY RECURRENCE-ID RRULE STATUS TRANSP URL"
        ),
        many="ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES",
        never="REQUEST-STATUS",
        status=("TENTATIVE", "CONFIRMED"),
    ),
    ("REPLY", "VEVENT"): _table(
        "3.2.3",
        count="1+",
        vtimezone="0 or 1",
        valarm="0",
        one="ATTENDEE DTSTAMP ORGANIZER UID",
        at_most_one=(
            "RECURRENCE-ID SEQUENCE CLASS CREATED DESCRIPTION DTEND DTSTART DURATION GEO "
            "LAST-MODIFIED LOCATION PRIORITY RRULE STATUS SUMMARY TRANSP URL"
        ),
        many=("ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES REQUEST-STATUS"),
    ),
    ("ADD", "VEVENT"): _table(
        "3.2.4",
        count="1",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER SEQUENCE SUMMARY UID",
        at_most_one=(
            "CLASS CREATED DESCRIPTION DTEND DURATION GEO LAST-MODIFIED LOCATION PRIORITY "
            "STATUS TRANSP URL"
        ),
        many="ATTACH ATTENDEE CATEGORIES COMMENT CONTACT RELATED-TO RESOURCES",
        never="EXDATE RECURRENCE-ID REQUEST-STATUS RDATE RRULE",
        fatal_never="EXDATE RECURRENCE-ID RDATE RRULE",
        status=("TENTATIVE", "CONFIRMED"),
    ),
    ("CANCEL", "VEVENT"): _table(
        "3.2.5",
        count="1+",
        vtimezone="0+",
        valarm="0",
        one="DTSTAMP ORGANIZER SEQUENCE UID",
        at_most_one=(
            "CLASS CREATED DESCRIPTION DTEND DTSTART DURATION GEO LAST-MODIFIED LOCATION "
            "PRIORITY RECURRENCE-ID RRULE STATUS SUMMARY TRANSP URL"
        ),
        many="ATTENDEE COMMENT ATTACH CATEGORIES CONTACT EXDATE RDATE RELATED-TO RESOURCES",
        never="REQUEST-STATUS",
        status=("CANCELLED",),
    ),
    ("REFRESH", "VEVENT"): _table(
        "3.2.6",
        count="1",
        vtimezone="0+",
        valarm="0",
        one="ATTENDEE DTSTAMP ORGANIZER UID",
        at_most_one="RECURRENCE-ID",
        many="COMMENT",
        never=(
            "ATTACH CATEGORIES CLASS CONTACT CREATED DESCRIPTION DTEND DTSTART DURATION "
            "EXDATE GEO LAST-MODIFIED LOCATION PRIORITY RDATE RELATED-TO REQUEST-STATUS "
            "RESOURCES RRULE SEQUENCE STATUS SUMMARY TRANSP URL"
        ),
    ),
    ("COUNTER", "VEVENT"): _table(
        "3.2.7",
        count="1",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER SEQUENCE SUMMARY UID",
        at_most_one=(
            "CLASS CREATED DESCRIPTION DTEND DURATION GEO LAST-MODIFIED LOCATION PRIORITY "
            "RECURRENCE-ID RRULE STATUS TRANSP URL"
        ),
        many=(
            "ATTACH ATTENDEE CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO "
            "REQUEST-STATUS RESOURCES"
        ),
        status=("CONFIRMED", "TENTATIVE", "CANCELLED"),
    ),
    ("DECLINECOUNTER", "VEVENT"): _table(
        "3.2.8",
        count="1+",
        vtimezone="0+",
        valarm="0",
        one="DTSTAMP ORGANIZER SEQUENCE UID",
        one_plus="ATTENDEE",
        at_most_one=(
            "CLASS CREATED DESCRIPTION DTSTART DTEND DURATION GEO LAST-MODIFIED LOCATION "
            "PRIORITY RECURRENCE-ID RRULE STATUS SUMMARY TRANSP URL"
        ),
        many=("ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO REQUEST-STATUS RESOURCES"),
        status=("TENTATIVE", "CONFIRMED"),
    ),
    ("PUBLISH", "VFREEBUSY"): _table(
        "3.3.1",
        count="1+",
        vtimezone="0",
        valarm="0",
        one="DTSTAMP DTSTART DTEND ORGANIZER UID",
        at_most_one="CONTACT URL",
        many="FREEBUSY COMMENT",
        never="ATTENDEE DURATION REQUEST-STATUS",
    ),
    ("REQUEST", "VFREEBUSY"): _table(
        "3.3.2",
        count="1",
        vtimezone="0",
        valarm="0",
        one="DTEND DTSTAMP DTSTART ORGANIZER UID",
        one_plus="ATTENDEE",
        at_most_one="CONTACT",
        many="COMMENT",
        never="FREEBUSY DURATION REQUEST-STATUS URL",
    ),
    ("REPLY", "VFREEBUSY"): _table(
        "3.3.3",
        count="1",
        vtimezone="0",
        valarm="0",
        one="ATTENDEE DTSTAMP DTEND DTSTART ORGANIZER UID",
        at_most_one="CONTACT URL",
        many="FREEBUSY COMMENT REQUEST-STATUS",
        never="DURATION SEQUENCE",
    ),
    ("PUBLISH", "VTODO"): _table(
        "3.4.1",
        count="1+",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER PRIORITY SUMMARY UID",
        at_most_one=(
            "SEQUENCE CLASS COMPLETED CREATED DESCRIPTION DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE RECURRENCE-ID RRULE STATUS URL"
        ),
        many="ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES",
        never="ATTENDEE REQUEST-STATUS",
        status=("COMPLETED", "NEEDS-ACTION", "IN-PROCESS", "CANCELLED"),
    ),
    ("REQUEST", "VTODO"): _table(
        "3.4.2",
        count="1+",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP DTSTART ORGANIZER PRIORITY SUMMARY UID",
        one_plus="ATTENDEE",
        at_most_one=(
            "SEQUENCE CLASS COMPLETED CREATED DESCRIPTION DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE RECURRENCE-ID RRULE STATUS URL"
        ),
        many="ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES",
        never="REQUEST-STATUS",
        status=("COMPLETED", "NEEDS-ACTION", "IN-PROCESS"),
    ),
    ("REPLY", "VTODO"): _table(
        "3.4.3",
        count="1+",
        vtimezone="0 or 1",
        valarm="0",
        one="ATTENDEE DTSTAMP ORGANIZER UID",
        at_most_one=(
            "CLASS COMPLETED CREATED DESCRIPTION DTSTART DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE PRIORITY RRULE RECURRENCE-ID SEQUENCE STATUS SUMMARY "
            "URL"
        ),
        many=("REQUEST-STATUS ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES"),
    ),
    ("ADD", "VTODO"): _table(
        "3.4.4",
        count="1",
        vtimezone="0+",
        valarm="0+",
        one="DTSTAMP ORGANIZER PRIORITY SEQUENCE SUMMARY UID",
        at_most_one=(
            "CLASS COMPLETED CREATED DESCRIPTION DTSTART DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE STATUS URL"
        ),
        many="ATTACH ATTENDEE CATEGORIES COMMENT CONTACT RELATED-TO RESOURCES",
        never="EXDATE RECURRENCE-ID REQUEST-STATUS RDATE RRULE",
        fatal_never="EXDATE RECURRENCE-ID RDATE RRULE",
        status=("COMPLETED", "NEEDS-ACTION", "IN-PROCESS"),
    ),
    ("CANCEL", "VTODO"): _table(
        "3.4.5",
        count="1+",
        vtimezone="0 or 1",
        valarm="0",
        one="UID DTSTAMP ORGANIZER SEQUENCE",
        at_most_one=(
            "CLASS COMPLETED CREATED DESCRIPTION DTSTART DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE RECURRENCE-ID RRULE PRIORITY STATUS URL"
        ),
        many="ATTENDEE ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO RESOURCES",
        never="REQUEST-STATUS",
        status=("CANCELLED",),
    ),
    ("REFRESH", "VTODO"): _table(
        "3.4.6",
        count="1",
        vtimezone="0+",
        valarm="0",
        one="ATTENDEE DTSTAMP UID",
        at_most_one="RECURRENCE-ID",
        never=(
            "ATTACH CATEGORIES CLASS COMMENT COMPLETED CONTACT CREATED DESCRIPTION DTSTART "
            "DUE DURATION EXDATE GEO LAST-MODIFIED LOCATION ORGANIZER PERCENT-COMPLETE "
            "PRIORITY RDATE RELATED-TO REQUEST-STATUS RESOURCES RRULE SEQUENCE STATUS URL"
        ),
    ),
    ("COUNTER", "VTODO"): _table(
        "3.4.7",
        count="1",
        vtimezone="0 or 1",
        valarm="0+",
        one="DTSTAMP ORGANIZER PRIORITY SUMMARY UID",
        one_plus="ATTENDEE",
        at_most_one=(
            "CLASS COMPLETED CREATED DESCRIPTION DTSTART DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE RECURRENCE-ID RRULE SEQUENCE STATUS URL"
        ),
        many=("ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO REQUEST-STATUS RESOURCES"),
        status=("COMPLETED", "NEEDS-ACTION", "IN-PROCESS", "CANCELLED"),
    ),
    ("DECLINECOUNTER", "VTODO"): _table(
        "3.4.8",
        count="1",
        vtimezone="0+",
        valarm="0",
        one="DTSTAMP ORGANIZER SEQUENCE UID",
        one_plus="ATTENDEE",
        at_most_one=(
            "CLASS COMPLETED CREATED DESCRIPTION DTSTART DUE DURATION GEO LAST-MODIFIED "
            "LOCATION PERCENT-COMPLETE PRIORITY RECURRENCE-ID RRULE STATUS URL"
        ),
        many=("ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO REQUEST-STATUS RESOURCES"),
        status=("COMPLETED", "NEEDS-ACTION", "IN-PROCESS"),
    ),
    ("PUBLISH", "VJOURNAL"): _table(
        "3.5.1",
        count="1+",
        vtimezone="0+",
        valarm="0+",
        one="DESCRIPTION DTSTAMP DTSTART ORGANIZER UID",
        at_most_one="CLASS CREATED LAST-MODIFIED RECURRENCE-ID RRULE SEQUENCE STATUS SUMMARY URL",
        many="ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO",
        never="ATTENDEE REQUEST-STATUS",
        status=("DRAFT", "FINAL", "CANCELLED"),
    ),
    ("ADD", "VJOURNAL"): _table(
        "3.5.2",
        count="1",
        vtimezone="0 or 1",
        valarm="0+",
        one="DESCRIPTION DTSTAMP DTSTART ORGANIZER SEQUENCE UID",
        at_most_one="CLASS CREATED LAST-MODIFIED STATUS SUMMARY URL",
        many="ATTACH CATEGORIES COMMENT CONTACT RELATED-TO",
        never="ATTENDEE EXDATE RECURRENCE-ID REQUEST-STATUS RDATE RRULE",
        fatal_never="EXDATE RECURRENCE-ID RDATE RRULE",
        status=("DRAFT", "FINAL", "CANCELLED"),
    ),
    ("CANCEL", "VJOURNAL"): _table(
        "3.5.3",
        count="1+",
        vtimezone="0+",
        valarm="0",
        one="DTSTAMP ORGANIZER SEQUENCE UID",
        at_most_one=(
            "CLASS CREATED DESCRIPTION DTSTART LAST-MODIFIED RECURRENCE-ID RRULE STATUS SUMMARY URL"
        ),
        many="ATTACH CATEGORIES COMMENT CONTACT EXDATE RDATE RELATED-TO",
        never="ATTENDEE REQUEST-STATUS",
        status=("CANCELLED",),
    ),
}

# Section 3.1.1: the VCALENDAR itself.
_CALENDAR_ONE = ("PRODID", "VERSION")

# Required properties whose absence is only a warning (see the module docstring).
_LENIENT_REQUIRED: dict[str, frozenset[str]] = {
    "*": frozenset({"SUMMARY", "PRIORITY", "DESCRIPTION", "DTSTAMP"}),
    "REPLY": frozenset({"ORGANIZER"}),
    "PUBLISH": frozenset({"ORGANIZER"}),  # Outlook/GoToMeeting publish without one
    "CANCEL": frozenset({"SEQUENCE"}),
    "COUNTER": frozenset({"SEQUENCE"}),  # libkcal omits SEQUENCE:0
    "DECLINECOUNTER": frozenset({"SEQUENCE"}),
    "VTODO": frozenset({"DTSTART"}),
    "VFREEBUSY": frozenset({"UID"}),
}

# Properties that identify or place an instance: a duplicate is ambiguous, so it is
# an error rather than "first one wins".
_AMBIGUOUS_DUPLICATES = frozenset(
    {"UID", "DTSTART", "DTEND", "DUE", "DURATION", "RECURRENCE-ID", "SEQUENCE", "RRULE"}
)

_DATE_PROPS = ("DTSTART", "DTEND", "DUE", "RECURRENCE-ID")
_MULTI_DATE_PROPS = ("EXDATE", "RDATE")
_DATE_VALUE = re.compile(r"^\d{8}(T\d{6}Z?)?$", re.IGNORECASE)
_RRULE_PART = re.compile(r"^[A-Z-]+=[^;=]*$")
_FREQS = frozenset({"SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY"})


def table_for(method: str, component: str) -> Table | None:
    """The restriction table for a method and component, or None when section 3
    does not define that combination (e.g. a VJOURNAL REQUEST)."""
    return TABLES.get((method.upper(), component.upper()))


def validated(msg: ITipMessage, warnings: list[str] | None = None) -> list[Violation]:
    """:func:`validate`, remembered on the message (``ITipMessage.checked``).

    The engine checks the message as it was received: the result is computed once per
    parsed message (the processing worker does it before taking the database's write
    lock) and reused for every local recipient, whatever a decision did to the
    components since.
    """
    if msg.checked is None:
        notes: list[str] = []
        msg.checked = (tuple(validate(msg, notes)), tuple(notes))
    violations, notes_found = msg.checked
    if warnings is not None:
        warnings.extend(notes_found)
    return list(violations)


def validate(msg: ITipMessage, warnings: list[str] | None = None) -> list[Violation]:
    """Check ``msg`` against the section 3 tables.

    Returns the violations that make the message unusable (each with its section
    3.6 code); lenient findings are appended to ``warnings`` when a list is given.
    """
    notes: list[str] = warnings if warnings is not None else []
    out: list[Violation] = []
    table = table_for(msg.method, msg.component_type)
    if table is None:
        out.append(
            Violation(
                "3.14",
                "METHOD",
                f"METHOD:{msg.method} is not defined for {msg.component_type} "
                "(RFC 5546 section 3 table)",
            )
        )
        return out
    _check_calendar(msg.calendar, out, notes)
    if table.count == "1" and len(msg.components) > 1:
        out.append(
            Violation(
                "3.4",
                msg.component_type,
                f"METHOD:{msg.method} allows exactly one {msg.component_type} "
                f"(section {table.section}), found {len(msg.components)}",
            )
        )
    others = {
        c.name for c in msg.calendar.components if c.name not in ("VTIMEZONE", msg.component_type)
    }
    for name in sorted(others & {"VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY"}):
        notes.append(
            f"{name} next to {msg.component_type} is not allowed (section {table.section})"
        )
    if table.vtimezone == "0" and msg.timezones:
        notes.append(f"VTIMEZONE is not allowed in {msg.method} {msg.component_type}; ignored")
    resolver = TzResolver.for_calendar(msg.calendar)
    for comp in msg.components:
        _check_component(msg.method, comp, table, resolver, out, notes)
    notes.extend(w for w in resolver.warnings if w not in notes)
    return out


def _check_calendar(cal: Component, out: list[Violation], notes: list[str]) -> None:
    for name in _CALENDAR_ONE:
        count = cal.count(name)
        if count == 0:
            notes.append(f"VCALENDAR has no {name} (section 3.1.1)")
        elif count > 1:
            notes.append(f"VCALENDAR has {count} {name} properties; used the first")
    version = (cal.value("VERSION") or "2.0").strip()
    if version != "2.0":
        out.append(
            Violation("3.9", "VERSION", f"VERSION:{version[:20]} is not 2.0 (section 3.1.1)")
        )


def _lenient(method: str, component: str, name: str) -> bool:
    return any(name in _LENIENT_REQUIRED.get(key, frozenset()) for key in ("*", method, component))


def _check_component(
    method: str,
    comp: Component,
    table: Table,
    resolver: TzResolver,
    out: list[Violation],
    notes: list[str],
) -> None:
    where = f"{comp.name} (section {table.section})"
    counts: dict[str, int] = {}
    for prop in comp.properties:
        counts[prop.name] = counts.get(prop.name, 0) + 1

    for name in sorted(table.one | table.one_plus):
        if counts.get(name, 0) == 0:
            text = f"{where} lacks required {name}"
            if _lenient(method, comp.name, name):
                notes.append(text)
            else:
                out.append(Violation("3.11", name, text))
    for name in sorted(table.one | table.at_most_one):
        if counts.get(name, 0) > 1:
            text = f"{where} has {counts[name]} {name} properties; at most one is allowed"
            if name in _AMBIGUOUS_DUPLICATES:
                out.append(Violation("3.1", name, text))
            else:
                notes.append(text + "; used the first")
    for name in sorted(table.never):
        if counts.get(name, 0):
            text = f"{where} must not contain {name}"
            if name in table.fatal_never:
                out.append(Violation("3.13", name, text))
            else:
                notes.append(text + "; ignored")

    alarms = comp.sub("VALARM")
    if alarms and table.valarm == "0":
        notes.append(f"{where} must not contain VALARM; ignored")
    for alarm in alarms:
        for name in ("ACTION", "TRIGGER"):
            if alarm.count(name) != 1:
                notes.append(f"VALARM in {comp.name} should have exactly one {name} (3.1.3)")

    _check_values(method, comp, table, resolver, out, notes)


def _check_values(
    method: str,
    comp: Component,
    table: Table,
    resolver: TzResolver,
    out: list[Violation],
    notes: list[str],
) -> None:
    end_name = "DUE" if comp.name == "VTODO" else "DTEND"
    if comp.get(end_name) is not None and comp.get("DURATION") is not None:
        # RFC 5545 section 3.6.1 forbids both, but Fastmail-style clients send both with
        # consistent values; refusing real invitations helps nobody.  The end property
        # wins everywhere (gateway.domain.state._span), and the note says so.
        notes.append(
            f"{comp.name} has both {end_name} and DURATION (RFC 5545 section 3.6.1, "
            f"RFC 5546 section {table.section}); {end_name} is used"
        )

    uid = comp.get("UID")
    if uid is not None and not uid.value.strip() and not _lenient(method, comp.name, "UID"):
        out.append(Violation("3.1", "UID", f"{comp.name} has an empty UID"))

    values: dict[str, date | datetime] = {}
    for name in _DATE_PROPS:
        prop = comp.get(name)
        if prop is None:
            continue
        try:
            if not _DATE_VALUE.match(prop.value.strip()):
                # The resolver would read "19970701T2100000Z" (RFC 5546 4.2.1's own
                # typo) as a DATE; a scheduling decision must not guess.
                raise ValueError(prop.value)
            values[name] = resolver.value(prop)
        except ValueError:
            out.append(Violation("3.5", name, f"{name}:{prop.value[:40]} is not a date or time"))
    for name in _MULTI_DATE_PROPS:
        for prop in comp.get_all(name):
            try:
                resolver.values(prop)
            except ValueError:
                out.append(
                    Violation("3.5", name, f"{name}:{prop.value[:40]} is not a date or time")
                )
    if comp.get("DTSTAMP") is not None:
        try:
            resolver.value(comp.get("DTSTAMP"))  # type: ignore[arg-type]
        except ValueError:
            notes.append("DTSTAMP is not a date-time; ignored")
    if comp.get("DURATION") is not None and table.never.isdisjoint({"DURATION"}):
        try:
            parse_duration(comp.value("DURATION") or "")
        except ValueError:
            out.append(
                Violation("3.1", "DURATION", f"DURATION:{comp.value('DURATION')} is invalid")
            )

    start, end = values.get("DTSTART"), values.get(end_name)
    if start is not None and end is not None and _before(end, start):
        out.append(Violation("3.5", end_name, f"{end_name} is before DTSTART in {comp.name}"))

    for prop in comp.get_all("RRULE"):
        problem = _rrule_problem(prop)
        if problem:
            out.append(Violation("3.6", "RRULE", f"RRULE:{prop.value[:60]} {problem}"))

    raw_seq = (comp.value("SEQUENCE") or "").strip()
    if raw_seq and not raw_seq.lstrip("-").isdigit():
        notes.append(f"SEQUENCE {raw_seq[:20]!r} is not an integer; read as 0")
    elif raw_seq and method == "ADD" and int(raw_seq) <= 0:
        # Section 3.2.4/3.4.4/3.5.2: an ADD is a revision, so SEQUENCE MUST be > 0.
        out.append(Violation("3.1", "SEQUENCE", "ADD requires a SEQUENCE greater than 0"))

    status = (comp.value("STATUS") or "").strip().upper()
    if status and table.status is not None and status not in table.status:
        notes.append(
            f"STATUS:{status} is not one of {'/'.join(table.status)} for {method} "
            f"(section {table.section}); kept"
        )

    for name in ("ORGANIZER", "ATTENDEE"):
        for prop in comp.get_all(name):
            _check_address(method, name, prop, out, notes)

    if comp.name == "VFREEBUSY":
        # Section 3.3: VFREEBUSY date-times MUST be UTC; local ones are converted.
        for name in ("DTSTART", "DTEND"):
            prop = comp.get(name)
            if prop is not None and name in values and not prop.value.strip().upper().endswith("Z"):
                notes.append(f"VFREEBUSY {name} is not in UTC (section 3.3); converted")


def _check_address(
    method: str, name: str, prop: Property, out: list[Violation], notes: list[str]
) -> None:
    addr = normalise(prop.value)
    if addr:
        return
    text = f"{name} has no calendar user address ({prop.value[:40]!r})"
    if name == "ORGANIZER" and method == "REPLY":
        notes.append(text)
    else:
        out.append(Violation("3.7", name, text))


def _before(end: date | datetime, start: date | datetime) -> bool:
    return to_utc(end) < to_utc(start)


def _rrule_problem(prop: Property) -> str:
    """Why an RRULE value is unusable (RFC 5545 section 3.3.10), or ""."""
    parts = [p for p in prop.value.strip().upper().split(";") if p]
    if not parts or not all(_RRULE_PART.match(p) for p in parts):
        return "is not a recurrence rule"
    fields = dict(p.split("=", 1) for p in parts)
    if fields.get("FREQ") not in _FREQS:
        return "has no valid FREQ"
    if "COUNT" in fields and "UNTIL" in fields:
        return "has both COUNT and UNTIL"
    if "COUNT" in fields and not fields["COUNT"].isdigit():
        return "has an invalid COUNT"
    if "INTERVAL" in fields and (not fields["INTERVAL"].isdigit() or fields["INTERVAL"] == "0"):
        return "has an invalid INTERVAL"
    return ""
