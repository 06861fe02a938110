"""MIME -> calendar parts: step 2 of the ingest flow (ARCHITECTURE.md section 1).

:func:`extract` is pure and total: it never raises on bad input.  Whatever it cannot
use becomes a ``problems`` entry, whatever it had to guess becomes a ``warnings``
entry, and the service turns both into the journal outcome's reason.

What it handles (RFC 6047 section 2 and the interoperability quirks of the corpus):

- every ``text/calendar`` and ``application/ics`` part, any case, nested in any
  multipart; other types whose filename ends ``.ics`` (``application/octet-stream``,
  Lotus Notes' ``text/plain``) with a warning; TNEF ``winmail.dat`` via
  :mod:`gateway.mime.tnef`;
- base64, quoted-printable (strict RFC 2045 decoding that keeps the unencoded ``=``
  some generators leave in, and ``=0D=0A`` encoded line ends), 7bit/8bit/binary;
- charsets: the ``charset`` parameter, else UTF-8 (RFC 5545 section 6 default), else
  latin-1 with a warning; a UTF-8 BOM is dropped; line ends become CRLF;
- the METHOD inside the calendar wins over the MIME ``method=`` parameter (RFC 6047
  section 2.4 requires them to agree; a mismatch is a warning);
- identical calendars sent twice (Google's text/calendar plus ``invite.ics``) are
  kept once; several VCALENDAR objects in one part are split;
- delivery reports (RFC 3464) and loop signals (RFC 3834 Auto-Submitted,
  Precedence, our own ``X-IMIP-Gateway`` marker) so the service never answers a
  bounce or itself.  Calendar parts inside a returned message of a bounce are not
  extracted: the bounce is about our mail, it is not an iTIP message.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.errors import MessageDefect, StartBoundaryNotFoundDefect
from email.message import Message
from email.policy import compat32
from email.utils import collapse_rfc2231_value
from typing import Any, Literal

from gateway.mime import headers as hdr
from gateway.mime.compose import GATEWAY_HEADER
from gateway.mime.dsn import DeliveryReport, parse_dsn
from gateway.mime.tnef import TnefContext, tnef_to_ical

__all__ = [
    "DEFAULT_MAX_CALENDAR_BYTES",
    "CalendarPart",
    "Extraction",
    "PartSource",
    "calendar_method",
    "extract",
]

DEFAULT_MAX_CALENDAR_BYTES = 2 * 1024 * 1024
_MAX_DEPTH = 30  # nested multiparts deeper than this are hostile, not mail
_MAX_PARTS = 500

PartSource = Literal["text/calendar", "application/ics", "attachment", "tnef"]

_CALENDAR_TYPES: dict[str, PartSource] = {
    "text/calendar": "text/calendar",
    "application/ics": "application/ics",
    # Seen from old clients; same content, wrong type names.
    "text/x-vcalendar": "text/calendar",
    "application/x-ics": "application/ics",
}
_REPORT_TYPES = frozenset(
    {"multipart/report", "message/delivery-status", "message/global-delivery-status"}
)
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_BOM = "\ufeff"
_NEWLINES = re.compile(r"\r\n|\r|\n")
_METHOD_LINE = re.compile(
    r"^METHOD[ \t]*:[ \t]*([A-Za-z-]+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)
# Line-anchored patterns start with a literal "\n" instead of ^ + MULTILINE: the regex
# engine then jumps from newline to newline (~7x faster on a 30 KB calendar) instead
# of trying every position.  They are applied to "\n" + text so the first line counts.
_BEGIN_END = re.compile(r"\n(BEGIN|END)[ \t]*:[ \t]*VCALENDAR[ \t]*\r?(?=\n|\Z)", re.IGNORECASE)
_PROP_LINE = re.compile(
    r"\n(UID|SEQUENCE|RECURRENCE-ID)(?:;[^:\r\n]*)?:([^\r\n]*)\r?(?=\n|\Z)", re.IGNORECASE
)
_QP_STRICT = re.compile(rb"=(?:([0-9A-F]{2})|[ \t]*\r?\n)")
_QP_LENIENT = re.compile(rb"=(?:([0-9A-Fa-f]{2})|[ \t]*\r?\n)")
_QP_BAD = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\n)")
_NAME_HINTS = (".ic", ".vcs", "winmail")
_BOUNCE_LOCALPARTS = frozenset({"mailer-daemon", "postmaster"})
# Charsets in which ASCII whitespace is one byte per character: trailing whitespace may
# be ignored when comparing encoded bodies.
_ASCII_COMPATIBLE = frozenset(
    {"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252"}
)


@dataclass(frozen=True, slots=True)
class CalendarPart:
    """One VCALENDAR object found in a mail, decoded to text with CRLF line ends."""

    index: int  # position in Extraction.parts
    text: str
    content_type: str  # lower-case MIME type of the part it came from
    mime_method: str | None  # the Content-Type ``method=`` parameter, upper-case
    method: str | None  # METHOD read from the calendar text, upper-case
    charset: str  # the charset actually used to decode the part
    filename: str | None
    source: PartSource
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Extraction:
    """Everything the service needs from one inbound mail."""

    parts: tuple[CalendarPart, ...] = ()
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    message_id: str | None = None
    in_reply_to: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    subject: str = ""
    date: datetime | None = None
    from_addresses: tuple[str, ...] = ()
    sender: str = ""
    reply_to: tuple[str, ...] = ()
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    dsn: DeliveryReport | None = None
    auto_submitted: str | None = None  # RFC 3834 keyword, lower-case ("no" when absent)
    precedence: str | None = None  # bulk/junk/list, lower-case
    is_bounce: bool = False
    generated_by_us: bool = False  # carries an imip-gateway marker (ours or another's)
    # The X-IMIP-Gateway values: the service compares them with its own installation's
    # marker, since another gateway's mail (a partner organisation) is no loop.
    gateway_markers: tuple[str, ...] = ()
    # Raw (decoded) Authentication-Results values, top first, for sender_identity().
    authentication_results: tuple[str, ...] = field(default=())

    @property
    def is_auto_submitted(self) -> bool:
        """RFC 3834 section 5: anything but ``no`` means do not auto-reply."""
        return self.auto_submitted not in (None, "no")


# --------------------------------------------------------------------------- decoding


def _raw_payload(part: Message) -> bytes:
    """The undecoded body bytes of a leaf part.

    compat32 stores the body as text with raw 8-bit bytes kept as surrogate escapes.
    ``get_payload()`` would decode those with the charset and ``errors="replace"``
    (lossy), so the stored value is read directly and turned back into the exact bytes.
    """
    payload = part.__dict__.get("_payload")
    if isinstance(payload, bytes):
        return payload
    if not isinstance(payload, str):
        return b""
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # set by code, not parsed: real text
        return payload.encode("utf-8", "surrogateescape")


def _qp_decode(data: bytes, warnings: list[str]) -> bytes:
    """RFC 2045 section 6.7 decoding that keeps unencoded ``=`` literally.

    Only ``=XX`` with two upper-case hex digits is an escape (rule 1); some generators
    leave ``=`` unencoded (``CN=Receiver``), and a lenient decoder would turn
    ``=Ca`` into a byte.  Lower-case escapes are accepted only when every ``=`` in
    the part is a valid escape, i.e. when the encoder evidently knew what it did.
    """
    bad = _QP_BAD.search(data)
    if bad is not None:
        warnings.append("invalid quoted-printable: '=' not followed by hex digits, kept as text")
    pattern = _QP_STRICT if bad is not None else _QP_LENIENT

    def repl(m: re.Match[bytes]) -> bytes:
        return binascii.unhexlify(m.group(1)) if m.group(1) else b""

    return pattern.sub(repl, data)


def _body_bytes(part: Message, warnings: list[str]) -> bytes:
    cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    if cte == "quoted-printable":
        return _qp_decode(_raw_payload(part), warnings)
    if cte == "base64":
        before = len(part.defects)
        decoded = part.get_payload(decode=True)  # lenient; registers defects on the part
        if len(part.defects) > before:
            warnings.append(
                "base64 body had defects (bad padding or characters); decoded leniently"
            )
        return decoded if isinstance(decoded, bytes) else b""
    if cte not in ("7bit", "8bit", "binary", ""):
        warnings.append(f"unknown Content-Transfer-Encoding {cte!r}; body taken as is")
    return _raw_payload(part)


def _decode_text(data: bytes, declared: str | None, warnings: list[str]) -> tuple[str, str]:
    """(text, charset used).  Declared charset, else UTF-8, else latin-1 (never fails)."""
    candidates: list[str] = []
    if declared:
        candidates.append(declared.strip().strip('"').lower())
    if "utf-8" not in candidates:
        candidates.append("utf-8")
    for i, charset in enumerate(candidates):
        try:
            text = data.decode(charset)
        except LookupError:
            warnings.append(f"unknown charset {charset!r}; trying UTF-8")
            continue
        except UnicodeDecodeError:
            if declared and i == 0:
                warnings.append(f"body is not valid {charset}; trying UTF-8")
            continue
        return text, charset
    warnings.append("body is not valid in its charset or UTF-8; decoded as latin-1")
    return data.decode("latin-1"), "latin-1"


def _normalise_text(text: str) -> str:
    if text.startswith(_BOM):
        text = text[1:]
    text = text.replace(_BOM, "")
    crlf = text.count("\r\n")
    if text.count("\n") == crlf and text.count("\r") == crlf:
        return text  # already CRLF only (the usual case): skip the regex pass
    return _NEWLINES.sub("\r\n", text)


def _split_vcalendars(text: str) -> tuple[list[str], list[str]]:
    """Top-level VCALENDAR objects in ``text`` and notes about what was around them."""
    notes: list[str] = []
    objects: list[str] = []
    depth = 0
    start = 0
    last_end = 0
    for m in _BEGIN_END.finditer("\n" + text):
        # Offsets in the padded text: m.start() is the "\n" before the line, which is
        # the line's own offset in ``text``; m.end() - 1 is its end there.
        if m.group(1).upper() == "BEGIN":
            if depth == 0:
                start = m.start()
                if text[last_end:start].strip():
                    notes.append("text outside BEGIN:VCALENDAR/END:VCALENDAR ignored")
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                end = m.end() - 1
                objects.append(text[start:end].rstrip("\r") + "\r\n")
                last_end = end
    if depth > 0:
        notes.append("VCALENDAR without END:VCALENDAR; passed on as found")
        objects.append(text[start:].rstrip("\r\n") + "\r\n")
    elif objects and text[last_end:].strip():
        notes.append("text outside BEGIN:VCALENDAR/END:VCALENDAR ignored")
    return objects, notes


def calendar_method(text: str) -> str | None:
    """METHOD of a VCALENDAR by a cheap line scan (the domain parses properly)."""
    m = _METHOD_LINE.search(text)
    return m.group(1).upper() if m else None


def _signature(text: str, method: str | None) -> tuple[object, ...]:
    """Identity of a calendar for duplicate detection: METHOD + (UID, RID, SEQUENCE)."""
    props = [(k.upper(), v.strip()) for k, v in _PROP_LINE.findall("\n" + text)]
    return (method, tuple(sorted(props)))


# --------------------------------------------------------------------------- parsing

# compat32's feedparser reads a message line by line in Python; on a Google-style
# invitation most of those lines are the HTML alternative and the base64 invite.ics,
# and parsing was ~60% of extract() (issue 5).  A well-formed message (CRLF line ends,
# clean header blocks, every multipart delimited and closed) is split here with C-level
# string searches into the same compat32 Message tree; anything else (bare LF or CR,
# message/* or report parts, a missing boundary, a header line the feedparser would
# flag) returns None and goes through message_from_bytes, defects and all.
_HEADER_LINE = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
# str.splitlines() breaks feedparser lines at these too; leave such mail to it.
_ODD_LINE_BREAKS = (b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
_MULTIPART_CTE_OK = frozenset({"7bit", "8bit", "binary"})


class _IndexedMessage(Message):
    """A compat32 :class:`Message` whose ``get`` is a dict lookup, not a header scan.

    ``Message.get`` lowers every header name on each call, and extraction asks the
    same entity for Content-Type, Content-Transfer-Encoding, ... a dozen times: with
    the 20-odd headers of a real mail that was an eighth of ``extract`` (issue 5).  The
    index holds the first value of each name, as ``get`` returns; it is rebuilt
    whenever the header list changed (every mutator replaces the list, appends to
    it, or - ``replace_header`` - is overridden here), so it is never stale.
    """

    _index: dict[str, tuple[str, str]] | None = None
    _indexed_list: list[tuple[str, str]] | None = None
    _indexed_len = 0

    def get(self, name: str, failobj: object = None) -> object:  # type: ignore[override]
        headers: list[tuple[str, str]] = self._headers  # type: ignore[attr-defined]
        index = self._index
        if index is None or self._indexed_list is not headers or self._indexed_len != len(headers):
            index = {}
            for k, v in headers:
                index.setdefault(k.lower(), (k, v))
            self._index, self._indexed_list, self._indexed_len = index, headers, len(headers)
        found = index.get(name.lower())
        if found is None:
            return failobj
        return self.policy.header_fetch_parse(*found)

    def replace_header(self, _name: str, _value: Any) -> None:
        self._index = None
        super().replace_header(_name, _value)


def _fast_parse(raw: bytes) -> Message | None:
    """The compat32 parse of ``raw`` when it is plainly well-formed, else ``None``."""
    # Byte-level checks: memchr/count speed, unlike a regex over the decoded text.
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        return None
    if any(b in raw for b in _ODD_LINE_BREAKS):
        return None
    if b"multipart/report" in raw[: raw.find(b"\r\n\r\n")].lower():
        return None  # a bounce (RFC 6522): parse_dsn needs the feedparser's tree anyway
    return _fast_entity(raw.decode("ascii", "surrogateescape"), 0, top=True)  # as BytesParser


def _fast_entity(text: str, depth: int, *, top: bool) -> Message | None:
    if depth > _MAX_DEPTH:
        return None
    if text.startswith("\r\n"):
        head, body = "", text[2:]
    else:
        end = text.find("\r\n\r\n")
        if end >= 0:
            head, body = text[:end], text[end + 4 :]
        elif top:
            return None  # no header/body separator: let the feedparser judge
        else:  # a part that is all headers (its last CRLF belongs to the delimiter)
            head, body = (text[:-2] if text.endswith("\r\n") else text), ""
    msg = _IndexedMessage()
    if head:
        name = ""
        value: list[str] = []
        for line in head.split("\r\n"):
            if line[:1] in (" ", "\t"):
                if not name:
                    return None  # FirstHeaderLineIsContinuationDefect
                value.append(line)
                continue
            m = _HEADER_LINE.match(line)
            if m is None:
                return None  # MissingHeaderBodySeparatorDefect or a "From " line
            if name:
                msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
            name = line[: m.end() - 1]
            value = [line[m.end() :].lstrip(" \t")]
        if name:
            msg.set_raw(name, "\r\n".join(value).rstrip("\r\n"))
    ctype = msg.get_content_type()
    maintype = ctype.partition("/")[0]
    if maintype == "message" or ctype == "multipart/digest" or ctype in _REPORT_TYPES:
        return None  # nested messages and reports: the full parser builds those
    if maintype != "multipart":
        msg.set_payload(body)
        return msg
    boundary = msg.get_boundary()
    cte = msg.get("Content-Transfer-Encoding")
    if not boundary or (cte is not None and str(cte).strip().lower() not in _MULTIPART_CTE_OK):
        return None
    parts = _fast_split(body, boundary)
    if parts is None:
        return None
    payload: list[Message | str] = []
    for chunk in parts:
        sub = _fast_entity(chunk, depth + 1, top=False)
        if sub is None:
            return None
        payload.append(sub)
    msg.set_payload(payload)
    return msg


def _fast_split(body: str, boundary: str) -> list[str] | None:
    """Texts of the parts between ``--boundary`` lines (RFC 2046 section 5.1.1).

    The CRLF before a delimiter belongs to the delimiter.  ``None`` unless there is a
    delimiter, at least one part and a close delimiter ``--boundary--``.
    """
    s = "\r\n" + body
    delim = "\r\n--" + boundary
    found: list[tuple[int, int]] = []  # (start of the CRLF before, start of next line)
    closed = False
    pos = s.find(delim)
    while pos >= 0:
        line_end = s.find("\r\n", pos + 2)
        if line_end < 0:
            line_end = len(s)
        tail = s[pos + len(delim) : line_end]
        close = tail.startswith("--")
        if (tail[2:] if close else tail).strip(" \t") == "":
            if close and not found:
                return None
            found.append((pos, line_end + 2))
            if close:
                closed = True
                break
        pos = s.find(delim, pos + 2)
    if not closed or len(found) < 2:
        return None
    return [s[found[i][1] : found[i + 1][0]] for i in range(len(found) - 1)]


# --------------------------------------------------------------------------- walking


@dataclass(slots=True)
class _Found:
    text: str
    content_type: str
    mime_method: str | None
    charset: str
    filename: str | None
    source: PartSource
    warnings: list[str]
    where: str
    # Decoded body bytes without trailing whitespace (None for TNEF): a later part with
    # the same bytes and charset is the same calendar (Google's invite.ics copy).
    body_key: bytes | None = None
    same_as: _Found | None = None


@dataclass(slots=True)
class _State:
    max_bytes: int
    ctx: TnefContext
    found: list[_Found] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    defects: list[MessageDefect] = field(default_factory=list)
    count: int = 0
    skipped_returned: int = 0  # message/rfc822 parts of a report left unexamined
    has_report: bool = False  # a multipart/report or delivery-status part was seen


# Issue 5: a calendar part's Content-Type parameters were parsed twice (for its file
# name and for charset/method).  They are parsed once here; when parsing raises, the
# exception is kept and raised again exactly where the former code raised it.
_PARAM_ERRORS = (ValueError, LookupError, TypeError)  # what _filename() swallows
_ABSENT = object()


def _content_type_params(part: Message) -> object:
    """``part.get_params()`` (a list, or None without Content-Type), or the exception."""
    try:
        return part.get_params()
    except Exception as exc:  # re-raised by _filename/_params where it used to surface
        return exc


def _first_param(params: object, name: str) -> object:
    """``Message.get_param(name)`` over an already parsed parameter list."""
    if isinstance(params, list):
        for key, value in params:
            if key.lower() == name:
                return value
    return _ABSENT


def _filename(part: Message, ct_params: object) -> str | None:
    """``part.get_filename()`` (decoded), reusing the parsed Content-Type parameters.

    The email package's steps: the Content-Disposition ``filename``, else the
    Content-Type ``name``, RFC 2231-collapsed and stripped; unreadable means None.
    """
    try:
        raw = _first_param(part.get_params(header="content-disposition"), "filename")
        if raw is _ABSENT:
            if isinstance(ct_params, BaseException):
                raise ct_params
            raw = _first_param(ct_params, "name")
        if raw is _ABSENT:
            return None
        name = collapse_rfc2231_value(raw).strip()  # type: ignore[arg-type]
    except _PARAM_ERRORS:
        return None
    return hdr.decode_value(name) if name else None


def _params(part: Message, ct_params: object) -> dict[str, str]:
    """Content-Type parameters by lower-case name (first wins), RFC 2231-collapsed."""
    if isinstance(ct_params, BaseException):
        raise ct_params
    out: dict[str, str] = {}
    items: list[tuple[str, str]] = ct_params if isinstance(ct_params, list) else []
    for key, value in items:
        # typeshed says str, but RFC 2231 values arrive as (charset, language, text).
        raw: object = value
        text = collapse_rfc2231_value(raw) if isinstance(raw, tuple) else raw
        if isinstance(text, str):
            out.setdefault(key.lower(), text)
    return out


def _may_name_calendar(part: Message) -> bool:
    """Cheap pre-check before the (slow) parameter parsing of ``get_filename``."""
    for name in ("content-disposition", "content-type"):
        value = part.get(name)
        if value is not None:
            low = str(value).lower()
            if any(s in low for s in _NAME_HINTS):
                return True
    return False


def _leaf(part: Message, ctype: str, where: str, state: _State) -> None:
    known_type = ctype in _CALENDAR_TYPES or ctype in _TNEF_TYPES
    if not known_type and not _may_name_calendar(part):
        return
    ct_params = _content_type_params(part)
    filename = _filename(part, ct_params)
    lname = (filename or "").lower()
    notes: list[str] = []
    is_tnef = ctype in _TNEF_TYPES or lname == "winmail.dat"
    source: PartSource = "tnef"
    if not is_tnef:
        known = _CALENDAR_TYPES.get(ctype)
        if known is not None:
            source = known
        elif lname.endswith((".ics", ".ical", ".icalendar", ".vcs")):
            source = "attachment"
            notes.append(f"calendar found by file name {filename!r} in a {ctype} part")
        else:
            return
    raw = _raw_payload(part)
    if len(raw) > state.max_bytes * 4 // 3 + 4096:
        state.problems.append(
            f"{where}: calendar part of {len(raw)} encoded bytes exceeds the "
            f"{state.max_bytes}-byte limit; not processed"
        )
        return
    body = _body_bytes(part, notes)
    if len(body) > state.max_bytes:
        state.problems.append(
            f"{where}: calendar part of {len(body)} bytes exceeds the "
            f"{state.max_bytes}-byte limit; not processed"
        )
        return

    params = _params(part, ct_params)
    raw_method = params.get("method")
    mime_method = (
        hdr.decode_value(raw_method).upper() or None if isinstance(raw_method, str) else None
    )

    if is_tnef:
        result = tnef_to_ical(body, state.ctx)
        if result.text is None:
            state.problems.append(f"{where}: {result.problem}")
            return
        state.found.append(
            _Found(
                _normalise_text(result.text),
                ctype,
                mime_method,
                "utf-8",
                filename,
                "tnef",
                [*notes, *result.warnings],
                where,
            )
        )
        return

    charset_param = params.get("charset")
    declared = charset_param if isinstance(charset_param, str) else None
    key = body.rstrip()
    first_choice = declared.strip().strip('"').lower() if declared else "utf-8"
    if first_choice in _ASCII_COMPATIBLE:
        for earlier in state.found:
            if earlier.body_key == key and earlier.charset == first_choice:
                # Same bytes, same codec: the same text up to trailing whitespace, so
                # the same VCALENDAR objects; _assemble drops them as copies.  Skips
                # decoding, newline normalisation and splitting a second time.
                state.found.append(
                    _Found(
                        earlier.text,
                        ctype,
                        mime_method,
                        earlier.charset,
                        filename,
                        source,
                        notes,
                        where,
                        key,
                        earlier.same_as or earlier,
                    )
                )
                return
    text, used = _decode_text(body, declared, notes)
    state.found.append(
        _Found(_normalise_text(text), ctype, mime_method, used, filename, source, notes, where, key)
    )


def _walk(part: Message, where: str, depth: int, state: _State, in_report: bool) -> None:
    state.count += 1
    if state.count > _MAX_PARTS:
        if state.count == _MAX_PARTS + 1:
            state.problems.append(f"more than {_MAX_PARTS} MIME parts; the rest was not examined")
        return
    state.defects.extend(part.defects)
    if depth > _MAX_DEPTH:
        state.problems.append(f"{where}: MIME nesting deeper than {_MAX_DEPTH}; not examined")
        return
    ctype = part.get_content_type()
    maintype = ctype.partition("/")[0]
    if ctype in _REPORT_TYPES:
        state.has_report = True
    payload = part.get_payload()
    if maintype == "multipart" or (maintype == "message" and isinstance(payload, list)):
        if not isinstance(payload, list):
            # A multipart whose boundary never appears: compat32 leaves it as text.
            return
        if ctype in ("message/rfc822", "message/global"):
            if in_report:
                state.skipped_returned += 1  # the returned copy of our mail in a bounce
                return
            before = len(state.found)
            for i, sub in enumerate(payload):
                if isinstance(sub, Message):
                    _walk(sub, f"{where}.{i + 1}", depth + 1, state, in_report)
            for f in state.found[before:]:
                f.warnings.append("found inside an attached message/rfc822 (forwarded mail)")
            return
        report = in_report or ctype == "multipart/report"
        for i, sub in enumerate(payload):
            if isinstance(sub, Message):
                _walk(sub, f"{where}.{i + 1}", depth + 1, state, report)
        return
    _leaf(part, ctype, where, state)


# --------------------------------------------------------------------------- assembly


def _assemble(state: _State) -> tuple[list[CalendarPart], list[str]]:
    parts: list[CalendarPart] = []
    notes: list[str] = []
    seen_text: dict[str, int] = {}
    seen_sig: dict[tuple[object, ...], int] = {}
    splits: dict[int, tuple[list[str], list[str]]] = {}
    for f in state.found:
        if f.same_as is not None and id(f.same_as) in splits:
            objects, first_notes = splits[id(f.same_as)]
            split_notes = list(first_notes)
        else:
            objects, split_notes = _split_vcalendars(f.text)
            splits[id(f)] = (objects, list(split_notes))
        if not objects:
            state.problems.append(f"{f.where}: {f.content_type} part holds no BEGIN:VCALENDAR")
            continue
        if len(objects) > 1:
            split_notes.append(f"{len(objects)} VCALENDAR objects in one part, split")
        for obj in objects:
            method = calendar_method(obj)
            warns = [*f.warnings, *split_notes]
            if f.mime_method and method and f.mime_method != method:
                warns.append(
                    f"MIME method={f.mime_method} disagrees with METHOD:{method}; "
                    "the calendar's METHOD is used"
                )
            elif f.mime_method and not method:
                warns.append(f"calendar has no METHOD; MIME says method={f.mime_method}")
            elif f.content_type == "text/calendar" and not f.mime_method and f.source != "tnef":
                warns.append("text/calendar part without the method= parameter RFC 6047 requires")
            key = obj.strip()
            if key in seen_text:
                notes.append(f"{f.where}: identical copy of calendar part {seen_text[key]} dropped")
                continue
            sig = _signature(obj, method)
            if sig[1] and sig in seen_sig:
                notes.append(
                    f"{f.where}: same UID/METHOD/SEQUENCE as calendar part {seen_sig[sig]}, "
                    "copy dropped"
                )
                continue
            index = len(parts)
            seen_text[key] = index
            if sig[1]:
                seen_sig[sig] = index
            parts.append(
                CalendarPart(
                    index=index,
                    text=obj,
                    content_type=f.content_type,
                    mime_method=f.mime_method,
                    method=method,
                    charset=f.charset,
                    filename=f.filename,
                    source=f.source,
                    warnings=tuple(dict.fromkeys(warns)),
                )
            )
    return parts, notes


def _is_bounce(
    msg: Message, h: hdr.HeaderIndex, dsn: DeliveryReport | None, from_addresses: tuple[str, ...]
) -> bool:
    if dsn is not None or msg.get_content_type() == "multipart/report":
        return True
    if h.raw("X-Failed-Recipients"):
        return True
    return any(a.partition("@")[0] in _BOUNCE_LOCALPARTS for a in from_addresses)


def extract(raw: bytes, *, max_calendar_bytes: int = DEFAULT_MAX_CALENDAR_BYTES) -> Extraction:
    """Find every calendar object in a raw RFC 5322 message.  Never raises."""
    try:
        return _extract(raw, max_calendar_bytes)
    except Exception as exc:  # the daemon must never crash on a message
        return Extraction(problems=(f"message could not be parsed: {type(exc).__name__}: {exc}",))


def _extract(raw: bytes, max_calendar_bytes: int) -> Extraction:
    msg = _fast_parse(raw) or message_from_bytes(raw, policy=compat32)
    h = hdr.HeaderIndex(msg)
    from_addresses = hdr.addresses(h.raw("From"))
    sender = hdr.addresses(h.raw("Sender"))
    to = hdr.addresses(h.raw("To"))
    cc = hdr.addresses(h.raw("Cc"))
    subject = h.first("Subject") or ""
    date = hdr.parse_date(h.first("Date"))
    state = _State(
        max_bytes=max_calendar_bytes,
        ctx=TnefContext(
            from_address=from_addresses[0] if from_addresses else "",
            to_addresses=to,
            cc_addresses=cc,
            subject=subject,
            date=date,
        ),
    )
    _walk(msg, "1", 0, state, False)
    parts, dedup_notes = _assemble(state)

    warnings: list[str] = list(dedup_notes)
    defect_names = sorted({type(d).__name__ for d in state.defects})
    if defect_names:
        warnings.append("MIME defects: " + ", ".join(defect_names))
    if state.skipped_returned:
        warnings.append("message returned inside a delivery report not examined for calendars")
    elif not parts and not state.found and b"BEGIN:VCALENDAR" in raw.upper():
        broken = any(isinstance(d, StartBoundaryNotFoundDefect) for d in state.defects)
        state.problems.append(
            "calendar data present but not in any recognisable calendar MIME part"
            + (" (multipart boundary not found: malformed MIME)" if broken else "")
        )

    dsn = parse_dsn(msg) if state.has_report else None
    message_ids = hdr.message_ids(h.first("Message-ID"))
    auto = h.first("Auto-Submitted")
    precedence = h.first("Precedence")
    return Extraction(
        parts=tuple(parts),
        warnings=tuple(warnings),
        problems=tuple(state.problems),
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=hdr.message_ids(h.first("In-Reply-To")),
        references=hdr.message_ids(" ".join(hdr.decode_value(v) for v in h.raw("References"))),
        subject=subject,
        date=date,
        from_addresses=from_addresses,
        sender=sender[0] if sender else "",
        reply_to=hdr.addresses(h.raw("Reply-To")),
        to=to,
        cc=cc,
        dsn=dsn,
        auto_submitted=auto.split(";")[0].strip().lower() if auto else None,
        precedence=precedence.strip().lower() if precedence else None,
        is_bounce=_is_bounce(msg, h, dsn, from_addresses),
        generated_by_us=bool(h.raw(GATEWAY_HEADER)),
        gateway_markers=tuple(hdr.decode_value(v).strip() for v in h.raw(GATEWAY_HEADER)),
        authentication_results=tuple(hdr.decode_value(v) for v in h.raw("Authentication-Results")),
    )
