"""iTIP object -> iMIP mail (RFC 6047), ready for the outbox.

The message is ``multipart/alternative`` with a human ``text/plain`` summary first and
``text/calendar; method=X; charset=UTF-8`` last (RFC 6047 section 2.4: the calendar
is the preferred alternative), optionally wrapped in ``multipart/mixed`` with the same
calendar as an ``application/ics`` attachment for clients that only look at
attachments.

Every header is built from plain text on a fresh :class:`~email.message.EmailMessage`;
values that come from calendar data (SUMMARY, CN, LOCATION, ...) are sanitised first:
control characters (CR/LF included) become spaces and lengths are bounded, and the
email library RFC 2047-encodes whatever is not ASCII.  Inbound header objects are
never reused (ARCHITECTURE.md section 9).  Time and Message-IDs are injected.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Literal

__all__ = [
    "GATEWAY_HEADER",
    "ComposeError",
    "ComposeRequest",
    "ComposedMessage",
    "EventSummary",
    "SubjectKind",
    "compose_imip",
    "sanitise_header_text",
]

# Stamped on every message the gateway sends; extract.py reads it to avoid loops.
GATEWAY_HEADER = "X-IMIP-Gateway"

ITIP_METHODS = frozenset(
    {"PUBLISH", "REQUEST", "REPLY", "ADD", "CANCEL", "REFRESH", "COUNTER", "DECLINECOUNTER"}
)

SubjectKind = Literal[
    "invitation",
    "updated",
    "cancelled",
    "accepted",
    "declined",
    "tentative",
    "delegated",
    "counter",
    "declinecounter",
    "refresh",
    "freebusy",
    "published",
    "added",
]

_SUBJECT_PREFIX: dict[str, str] = {
    "invitation": "Invitation",
    "updated": "Updated",
    "cancelled": "Cancelled",
    "accepted": "Accepted",
    "declined": "Declined",
    "tentative": "Tentative",
    "delegated": "Delegated",
    "counter": "Counter proposal",
    "declinecounter": "Declined counter proposal",
    "refresh": "Refresh",
    "freebusy": "Free/busy",
    "published": "Published",
    "added": "Added instances",
}

_HEADLINE: dict[str, str] = {
    "invitation": "You are invited to an event.",
    "updated": "An event you are invited to has been updated.",
    "cancelled": "An event has been cancelled.",
    "accepted": "An invitation has been accepted.",
    "declined": "An invitation has been declined.",
    "tentative": "An invitation has been tentatively accepted.",
    "delegated": "An invitation has been delegated.",
    "counter": "A change to an event has been proposed.",
    "declinecounter": "A proposed change to an event has been declined.",
    "refresh": "The latest version of an event has been requested.",
    "freebusy": "Free/busy information.",
    "published": "An event has been published.",
    "added": "Instances have been added to an event.",
}

MAX_TITLE = 150  # characters of a calendar-derived title in a Subject
MAX_NAME = 100  # characters of a display name
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPACES = re.compile(r"\s+")
_METHOD_LINE = re.compile(
    r"^METHOD[ \t]*:[ \t]*([A-Za-z-]+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)

# 7bit: RFC 2045 ASCII; we keep the calendar's own 75-octet folding unencoded.
_POLICY = email_policy.SMTP.clone(cte_type="7bit", max_line_length=78)


class ComposeError(ValueError):
    """The request cannot become a valid iMIP message (bad address, method mismatch)."""


@dataclass(frozen=True, slots=True)
class EventSummary:
    """Human-readable facts for the text/plain part; all optional but the title."""

    title: str
    start: datetime | date | None = None
    end: datetime | date | None = None
    timezone_name: str | None = None
    location: str = ""
    organizer: str = ""
    attendees: Sequence[str] = ()
    changes: Sequence[str] = ()
    partstat: str | None = None  # for replies: the PARTSTAT being sent
    recurrence_note: str = ""


@dataclass(frozen=True, slots=True)
class ComposeRequest:
    """Everything :func:`compose_imip` needs; built by the outbox from domain output."""

    from_address: str
    to: Sequence[tuple[str, str]]  # (display name, address)
    method: str
    ical_text: str  # a complete VCALENDAR with its VTIMEZONEs
    summary: EventSummary
    subject_kind: SubjectKind
    date: datetime
    from_name: str = ""
    # RFC 5322 section 3.6.2: set when the gateway sends on a user's behalf.
    sender: tuple[str, str] | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    message_id: str | None = None
    message_id_domain: str | None = None
    auto_submitted: Literal["auto-generated", "auto-replied"] = "auto-generated"
    attach_ics: bool = False
    gateway_marker: str = "1"
    extra_notes: Sequence[str] = field(default=())


@dataclass(frozen=True, slots=True)
class ComposedMessage:
    data: bytes  # CRLF line ends, 7-bit clean
    message_id: str


def sanitise_header_text(value: str, limit: int = MAX_TITLE) -> str:
    """Text safe to put in a header: no control or format characters, bounded length.

    CR/LF, NUL, other C0/C1 controls, Unicode line/paragraph separators and bidi
    controls (category Cf) all become spaces; runs of whitespace collapse.  This is
    what prevents ``SUMMARY:Hi\\r\\nBcc: victim@x`` from adding a header.
    """
    cleaned = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in value
    )
    cleaned = _SPACES.sub(" ", cleaned).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def _address(name: str, addr: str) -> Address:
    clean_addr = sanitise_header_text(addr, 320)
    if clean_addr != addr.strip() or not clean_addr or " " in clean_addr:
        raise ComposeError(f"invalid mail address {addr!r}")
    try:
        return Address(display_name=sanitise_header_text(name, MAX_NAME), addr_spec=clean_addr)
    except (ValueError, IndexError) as exc:
        raise ComposeError(f"invalid mail address {addr!r}: {exc}") from exc


def _msgid(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"<[^<>\s\x00-\x1f\x7f]+@[^<>\s\x00-\x1f\x7f]+>", value):
        raise ComposeError(f"invalid Message-ID {value!r}")
    return value


def _when(value: datetime | date) -> str:
    day = f"{_DAYS[value.weekday()]} {value.day} {_MONTHS[value.month - 1]} {value.year}"
    if isinstance(value, datetime):
        return f"{day} {value.hour:02d}:{value.minute:02d}"
    return day


def _when_line(s: EventSummary) -> str:
    if s.start is None:
        return ""
    start = s.start
    if not isinstance(start, datetime):
        text = _when(start)
        if s.end is not None and not isinstance(s.end, datetime):
            # DTEND of an all-day event is exclusive (RFC 5545 section 3.6.1).
            last = date.fromordinal(s.end.toordinal() - 1)
            if last > start:
                text += f" – {_when(last)}"
        return text + " (all day)"
    text = _when(start)
    end = s.end
    if isinstance(end, datetime):
        same_day = end.date() == start.date()
        text += f"–{end.hour:02d}:{end.minute:02d}" if same_day else f" – {_when(end)}"
    if s.timezone_name:
        text += f" ({s.timezone_name})"
    elif start.tzinfo is not None:
        text += f" ({start.tzname() or 'UTC'})"
    else:
        text += " (floating time: your local time)"
    return text


def _plain_text(req: ComposeRequest) -> str:
    s = req.summary
    lines = [_HEADLINE.get(req.subject_kind, "Calendar message."), ""]

    def add(label: str, value: str) -> None:
        if value:
            lines.append(f"{label}: {sanitise_header_text(value, 500)}")

    add("Title", s.title)
    add("When", _when_line(s))
    add("Repeats", s.recurrence_note)
    add("Where", s.location)
    add("Organiser", s.organizer)
    if s.partstat:
        add("Response", s.partstat.capitalize().replace("-", " "))
    if s.attendees:
        lines.append("Attendees:")
        lines.extend(f"  - {sanitise_header_text(a, 200)}" for a in s.attendees)
    if s.changes:
        lines.append("What changed:")
        lines.extend(f"  - {sanitise_header_text(c, 500)}" for c in s.changes)
    for note in req.extra_notes:
        lines.append(sanitise_header_text(note, 500))
    lines += [
        "",
        "The calendar data is attached to this message; a calendar-aware mail client",
        "shows buttons to respond.",
        "",
    ]
    return "\r\n".join(lines)


def _calendar_cte(text: str) -> str:
    """7bit when ASCII with short lines, else quoted-printable (RFC 2045 section 2.7)."""
    if text.isascii() and all(len(line) <= 76 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


def subject_for(kind: SubjectKind, title: str) -> str:
    prefix = _SUBJECT_PREFIX[kind]
    clean = sanitise_header_text(title, MAX_TITLE) or "(no title)"
    return f"{prefix}: {clean}"


def compose_imip(req: ComposeRequest) -> ComposedMessage:
    """Build the iMIP message bytes (CRLF, 7-bit clean).  Raises :class:`ComposeError`."""
    method = req.method.strip().upper()
    if method not in ITIP_METHODS:
        raise ComposeError(f"unknown iTIP method {req.method!r}")
    found = _METHOD_LINE.search(req.ical_text)
    if found is None or found.group(1).upper() != method:
        # RFC 6047 section 2.4: the MIME method must equal the calendar's METHOD.
        raise ComposeError(
            f"calendar METHOD {found.group(1) if found else 'missing'} differs from {method}"
        )
    if not req.to:
        raise ComposeError("no recipients")
    if req.subject_kind not in _SUBJECT_PREFIX:
        raise ComposeError(f"unknown subject kind {req.subject_kind!r}")

    if req.message_id:
        message_id = _msgid(req.message_id)
    elif req.message_id_domain:
        domain = sanitise_header_text(req.message_id_domain, 253)
        message_id = _msgid(make_msgid(domain=domain))
    else:
        raise ComposeError("neither message_id nor message_id_domain given")

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _address(req.from_name, req.from_address)
    if req.sender is not None and req.sender[1].lower() != req.from_address.lower():
        msg["Sender"] = _address(*req.sender)
    msg["To"] = [_address(name, addr) for name, addr in req.to]
    msg["Subject"] = subject_for(req.subject_kind, req.summary.title)
    msg["Date"] = format_datetime(req.date)
    msg["Message-ID"] = message_id
    if req.in_reply_to:
        msg["In-Reply-To"] = _msgid(req.in_reply_to)
    refs = [_msgid(r) for r in req.references]
    if req.in_reply_to and _msgid(req.in_reply_to) not in refs:
        refs.append(_msgid(req.in_reply_to))  # RFC 5322 section 3.6.4
    if refs:
        msg["References"] = " ".join(refs)
    # RFC 3834 section 5: marks the message as automatic so nobody auto-answers it.
    msg["Auto-Submitted"] = req.auto_submitted
    # Exchange/Outlook honour this instead of Auto-Submitted for out-of-office replies.
    msg["X-Auto-Response-Suppress"] = "All"
    msg[GATEWAY_HEADER] = sanitise_header_text(req.gateway_marker, 100) or "1"

    msg.set_content(_plain_text(req), subtype="plain", charset="utf-8")
    ical = req.ical_text.replace("\r\n", "\n").replace("\r", "\n")
    msg.add_alternative(ical, subtype="calendar", charset="utf-8", cte=_calendar_cte(ical))
    calendar_part = next(p for p in msg.iter_parts() if p.get_content_type() == "text/calendar")
    # RFC 6047 section 2.4: the method parameter is REQUIRED and equals METHOD.
    calendar_part.set_param("method", method)
    calendar_part.set_param("charset", "UTF-8")
    if req.attach_ics:
        msg.add_attachment(
            ical.replace("\n", "\r\n").encode("utf-8"),  # RFC 5545 section 3.1: CRLF
            maintype="application",
            subtype="ics",
            filename="invite.ics",
            cte="base64",
        )
    return ComposedMessage(data=msg.as_bytes(policy=_POLICY), message_id=message_id)
