"""iTIP object -> iMIP mail (RFC 6047), ready for the outbox.

The message is ``multipart/alternative`` with a human ``text/plain`` summary first and
``text/calendar; method=X; charset=UTF-8`` last (RFC 6047 section 2.4: the calendar
is the preferred alternative), optionally wrapped in ``multipart/mixed`` with the same
calendar as an ``application/ics`` attachment for clients that only look at
attachments.

The message is built as text from a fixed template, not with
:class:`email.message.EmailMessage` (whose header parsing, ``set_content`` and
generator cost ~1.5 ms per mail on the REQUEST -> REPLY path, issue 5).  The
guarantees are the same ones the email library gave:

- every header value is built here from plain text; values that come from calendar
  data (SUMMARY, CN, LOCATION, ...) are sanitised first: control and format characters
  (CR/LF included) become spaces and lengths are bounded, so no value can start a new
  header (ARCHITECTURE.md section 9: inbound header objects are never reused);
- anything that is not plain printable ASCII (or that looks like an encoded word) is
  sent as RFC 2047 encoded words, so the headers are 7-bit clean and decode back to
  exactly the sanitised text;
- header lines are folded at spaces to at most 78 characters (RFC 5322 section 2.2.3);
- bodies are 7bit when ASCII with short lines, else quoted-printable or base64
  (RFC 2045 section 6); every line ends with CRLF.

The multipart boundaries are derived from the Message-ID (so a message is a pure
function of its request, which tests rely on) and checked against the 7bit bodies.
Time and Message-IDs are injected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from email.errors import HeaderParseError
from email.headerregistry import Address
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

# RFC 5322 section 2.1.1: lines SHOULD be at most 78 characters.
_MAX_LINE = 78
# A word longer than this cannot be folded onto a line of its own; it is encoded instead.
_MAX_WORD = _MAX_LINE - 8
# RFC 2047 section 2: an encoded word is at most 75 characters; "=?utf-8?b?" + "?="
# leave 63, i.e. 15 base64 quanta = 45 octets of UTF-8 per word.
_EW_OCTETS = 45
# RFC 5322 section 3.2.3 atext, as dot-atoms: the fast path for addr-specs.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ADDR = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@(?:{_ATEXT}(?:\.{_ATEXT})*|\[[!-Z^-~]*\])")
# formataddr's rule: a display name with one of these must be a quoted-string.
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_QUOTE_ESCAPES = re.compile(r'([\\"])')


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
    if value.isascii() and value.isprintable():
        # Fast path: printable ASCII holds no Cc/Cf/Zl/Zp character.
        cleaned = value
    else:
        cleaned = "".join(
            " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in value
        )
    cleaned = _SPACES.sub(" ", cleaned).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


# --------------------------------------------------------------------------- headers


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 B-encoded UTF-8 words of at most 75 characters.

    Whitespace between adjacent encoded words is not part of the decoded text
    (RFC 2047 section 6.2), so the words may be folded apart freely and spaces inside
    ``text`` survive because they are encoded.  Characters are never split, and a
    word preferably ends just after a space of ``text`` so that decoders which keep
    the whitespace between encoded words (CPython 3.11's address parser, gh-128110)
    at worst double a space instead of splitting a word.
    """
    words: list[str] = []
    chunk: list[bytes] = []
    size = 0
    for ch in text:
        octets = ch.encode("utf-8", "replace")  # a lone surrogate becomes "?"
        if size + len(octets) > _EW_OCTETS:
            cut = len(chunk)
            for i in range(len(chunk) - 1, 0, -1):
                if chunk[i] == b" ":
                    cut = i + 1
                    break
            words.append(_ew(b"".join(chunk[:cut])))
            chunk = chunk[cut:]
            size = sum(map(len, chunk))
        chunk.append(octets)
        size += len(octets)
    if chunk:
        words.append(_ew(b"".join(chunk)))
    return words


def _ew(octets: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(octets).decode("ascii") + "?="


def _plain_word(word: str) -> bool:
    """May ``word`` appear as itself in a header (7-bit, not mistaken for an encoded word)?"""
    return word.isascii() and "=?" not in word and len(word) <= _MAX_WORD


def _unstructured_words(text: str) -> list[str]:
    """Words of sanitised unstructured text (RFC 5322 section 3.2.5), encoded as needed.

    Plain words stay readable; each maximal run of words that are not plain (non-ASCII,
    containing ``=?``, or too long to fold) becomes encoded words, with the spaces of
    the run inside the encoding.  ``text`` has single spaces only (sanitised), so
    joining the result with single spaces and unfolding restores it exactly.
    """
    out: list[str] = []
    run: list[str] = []
    for word in text.split(" "):
        if _plain_word(word):
            if run:
                out.extend(_encoded_words(" ".join(run)))
                run = []
            out.append(word)
        else:
            run.append(word)
    if run:
        out.extend(_encoded_words(" ".join(run)))
    return out


def _phrase_words(name: str) -> list[str]:
    """A sanitised display name as RFC 5322 phrase words (the rule of ``formataddr``)."""
    if not all(_plain_word(w) for w in name.split(" ")):
        return _encoded_words(name)
    if _SPECIALS.search(name):
        quoted = '"' + _QUOTE_ESCAPES.sub(r"\\\1", name) + '"'
        return quoted.split(" ")  # FWS inside a quoted-string is allowed (section 3.2.4)
    return name.split(" ")


def _addr_spec(addr: str) -> str:
    """A validated, 7-bit addr-spec; raises :class:`ComposeError`."""
    clean_addr = sanitise_header_text(addr, 320)
    if clean_addr != addr.strip() or not clean_addr or " " in clean_addr:
        raise ComposeError(f"invalid mail address {addr!r}")
    if _SIMPLE_ADDR.fullmatch(clean_addr):
        return clean_addr
    # Rare forms (quoted local parts, comments, IDN domains): the email library's parser.
    try:
        spec = Address(addr_spec=clean_addr)
        local, domain = spec.username, spec.domain
    except (ValueError, IndexError, HeaderParseError) as exc:
        raise ComposeError(f"invalid mail address {addr!r}: {exc}") from exc
    if not domain:
        raise ComposeError(f"invalid mail address {addr!r}: no domain")
    if not domain.isascii():
        try:  # RFC 5890: without SMTPUTF8 a domain travels as its A-label
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ComposeError(f"invalid mail address {addr!r}: {exc}") from exc
    result = str(Address(username=local, domain=domain).addr_spec)
    if not result.isascii():
        raise ComposeError(f"invalid mail address {addr!r}: non-ASCII local part")
    return result


def _mailbox(name: str, addr: str) -> list[str]:
    """``name <addr>`` (or the bare ``addr``) as header words."""
    spec = _addr_spec(addr)
    display = sanitise_header_text(name, MAX_NAME)
    if not display:
        return [spec]
    return [*_phrase_words(display), f"<{spec}>"]


def _mailbox_list(mailboxes: Sequence[tuple[str, str]]) -> list[str]:
    words: list[str] = []
    for i, (name, addr) in enumerate(mailboxes):
        if i:
            words[-1] += ","
        words.extend(_mailbox(name, addr))
    return words


def _header(name: str, words: Sequence[str]) -> str:
    """``Name: w1 w2 ...\\r\\n`` folded before a word that would pass 78 characters.

    Folding only turns an existing single space into CRLF + space, so unfolding
    (RFC 5322 section 2.2.3) gives back exactly the words joined with spaces.
    """
    lines: list[str] = []
    line = name + ":"
    fresh = True  # nothing but the field name (or a fold) on the line yet
    for word in words:
        if not fresh and len(line) + 1 + len(word) > _MAX_LINE:
            lines.append(line)
            line = ""
        line += " " + word
        fresh = False
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _msgid(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"<[^<>\s\x00-\x1f\x7f]+@[^<>\s\x00-\x1f\x7f]+>", value):
        raise ComposeError(f"invalid Message-ID {value!r}")
    if not value.isascii():
        raise ComposeError(f"invalid Message-ID {value!r}: not ASCII")
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


# --------------------------------------------------------------------------- bodies


def _crlf_lines(text: str) -> list[str]:
    """Lines of ``text`` split on CR, LF and CRLF only (not ``str.splitlines``'s
    Unicode separators, which are content in a calendar)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _seven_bit(lines: list[str], limit: int) -> bool:
    """May these lines go as 7bit (RFC 2045 section 2.7: ASCII, no NUL, short lines)?"""
    return all(line.isascii() and len(line) <= limit and "\x00" not in line for line in lines)


def _quoted_printable(data: bytes) -> str:
    """RFC 2045 section 6.7 with CRLF line ends (``data`` uses CRLF), lines <= 76."""
    return binascii.b2a_qp(data).decode("ascii")


def _base64_body(data: bytes) -> str:
    """RFC 2045 section 6.8: 76-character lines, CRLF."""
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def _text_body(
    lines: list[str], *, force_qp: bool, limit: int, errors: str = "replace"
) -> tuple[str, str]:
    """(Content-Transfer-Encoding, encoded body ending in CRLF) for UTF-8 text lines.

    7bit when ASCII with lines of at most ``limit``; else quoted-printable, unless
    base64 is shorter (mostly non-Latin text) and ``force_qp`` is off: the choice the
    email library's ``set_content`` made.  ``errors`` applies to lone surrogates.
    """
    text = "\r\n".join(lines) + "\r\n"
    if _seven_bit(lines, limit):
        return "7bit", text
    data = text.encode("utf-8", errors)
    qp = _quoted_printable(data)
    if not force_qp and len(qp) > len(data) * 4 // 3 + len(lines) * 2:
        return "base64", _base64_body(data)
    return "quoted-printable", qp


def _boundaries(message_id: str, bodies: Sequence[str]) -> tuple[str, str]:
    """Two multipart boundaries derived from the Message-ID, absent from every body.

    Only 7bit bodies can contain ``=_`` (quoted-printable encodes ``=``, base64 has no
    ``_``); calendar text is remote input, so the rare collision is still checked.
    """
    for salt in range(100):
        digest = hashlib.sha256(f"{salt}:{message_id}".encode()).hexdigest()
        alt, mixed = f"=_alt_{digest[:24]}", f"=_mix_{digest[24:48]}"
        if not any(alt in b or mixed in b for b in bodies):
            return alt, mixed
    raise ComposeError("no multipart boundary absent from the body")  # pragma: no cover


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

    head = [_header("From", _mailbox(req.from_name, req.from_address))]
    if req.sender is not None and req.sender[1].lower() != req.from_address.lower():
        head.append(_header("Sender", _mailbox(*req.sender)))
    head.append(_header("To", _mailbox_list(req.to)))
    head.append(
        _header("Subject", _unstructured_words(subject_for(req.subject_kind, req.summary.title)))
    )
    head.append(f"Date: {format_datetime(req.date)}\r\n")
    head.append(f"Message-ID: {message_id}\r\n")
    refs = [_msgid(r) for r in req.references]
    if req.in_reply_to:
        in_reply_to = _msgid(req.in_reply_to)
        head.append(f"In-Reply-To: {in_reply_to}\r\n")
        if in_reply_to not in refs:
            refs.append(in_reply_to)  # RFC 5322 section 3.6.4
    if refs:
        head.append(_header("References", refs))
    # RFC 3834 section 5: marks the message as automatic so nobody auto-answers it.
    head.append(f"Auto-Submitted: {req.auto_submitted}\r\n")
    # Exchange/Outlook honour this instead of Auto-Submitted for out-of-office replies.
    head.append("X-Auto-Response-Suppress: All\r\n")
    marker = sanitise_header_text(req.gateway_marker, 100) or "1"
    head.append(_header(GATEWAY_HEADER, _unstructured_words(marker)))
    head.append("MIME-Version: 1.0\r\n")

    plain_cte, plain = _text_body(_crlf_lines(_plain_text(req)), force_qp=False, limit=78)
    ical_lines = _crlf_lines(req.ical_text)
    try:
        # RFC 5545 section 3.1: CRLF line ends; the calendar's own folding is kept.
        cal_cte, calendar = _text_body(ical_lines, force_qp=True, limit=76, errors="strict")
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 can carry it
        raise ComposeError(f"calendar text is not valid Unicode: {exc.reason}") from exc
    attachment = (
        _base64_body(("\r\n".join(ical_lines) + "\r\n").encode("utf-8")) if req.attach_ics else ""
    )
    alt, mixed = _boundaries(message_id, (plain, calendar))
    # RFC 2046 section 5.1.1: the CRLF before a delimiter belongs to the delimiter,
    # hence the empty line after each body (which itself ends with CRLF).
    alternative = (
        f"--{alt}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {plain_cte}\r\n"
        "\r\n"
        f"{plain}\r\n"
        f"--{alt}\r\n"
        # RFC 6047 section 2.4: the method parameter is REQUIRED and equals METHOD.
        f'Content-Type: text/calendar; charset="UTF-8"; method={method}\r\n'
        f"Content-Transfer-Encoding: {cal_cte}\r\n"
        "\r\n"
        f"{calendar}\r\n"
        f"--{alt}--\r\n"
    )
    if req.attach_ics:
        body = (
            f'Content-Type: multipart/mixed; boundary="{mixed}"\r\n'
            "\r\n"
            f"--{mixed}\r\n"
            f'Content-Type: multipart/alternative; boundary="{alt}"\r\n'
            "\r\n"
            f"{alternative}\r\n"
            f"--{mixed}\r\n"
            'Content-Type: application/ics; name="invite.ics"\r\n'
            'Content-Disposition: attachment; filename="invite.ics"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n"
            f"{attachment}\r\n"
            f"--{mixed}--\r\n"
        )
    else:
        body = f'Content-Type: multipart/alternative; boundary="{alt}"\r\n\r\n{alternative}'
    data = ("".join(head) + body).encode("ascii")
    return ComposedMessage(data=data, message_id=message_id)
