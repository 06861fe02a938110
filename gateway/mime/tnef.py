"""Outlook TNEF (``winmail.dat``, ``application/ms-tnef``) meetings to iCalendar.

Outlook and on-premises Exchange sometimes send a meeting request or response only
as TNEF, with no text/calendar part.  ``tnefparse`` decodes the container and the
MAPI properties; this module maps the properties that matter for iTIP to an
iCalendar object (MS-OXCICAL describes the reverse mapping Exchange performs):

- message class ``IPM.Schedule.Meeting.Request`` (TNEF-era ``IPM.Microsoft
  Schedule.MtgReq``) -> METHOD:REQUEST; ``.Resp.Pos/Neg/Tent`` (``MtgRespP/N/A``)
  -> METHOD:REPLY with PARTSTAT ACCEPTED/DECLINED/TENTATIVE; ``.Canceled``
  (``MtgCncl``) -> METHOD:CANCEL;
- PidLidCleanGlobalObjectId / PidLidGlobalObjectId (MS-OXOCAL 2.2.1.27/2.2.1.28)
  -> UID: the embedded ``vCal-Uid`` string when present, else the upper-case hex
  of the clean id, which is exactly what Exchange puts in its own iCalendar UIDs;
- PidLidAppointmentStartWhole/EndWhole (UTC) -> DTSTART/DTEND; PidLidLocation or
  PidLidWhere -> LOCATION; PidLidAppointmentSequence -> SEQUENCE; the conversation
  topic -> SUMMARY; the sender and the recipient table -> ORGANIZER/ATTENDEE.

Recurring meeting requests get RRULE/EXDATE and a VTIMEZONE built from
PidLidAppointmentRecur and PidLidTimeZoneStruct (:mod:`gateway.mime.tnef_recurrence`);
replies and cancellations of a series need no rule (they name it by UID).

What cannot be converted faithfully gives a problem string, never an exception:
task requests, recurring requests whose rule is missing or has individually modified
occurrences, Hijri calendars, corrupt streams.  A single event in place of a series
would misinform the attendee, so it is never produced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.domain.addresses import normalise
from gateway.mime.tnef_recurrence import (
    RecurrenceError,
    parse_recurrence,
    utc_offset_minutes,
    vtimezone,
)

__all__ = ["TnefContext", "TnefResult", "tnef_to_ical"]

_PSETID_MEETING = "6ed8da90-450b-101b-98da-00aa003f1305"
_PSETID_APPOINTMENT = "00062002-0000-0000-c000-000000000046"

# MS-OXOCAL named property long ids.
_LID_GLOBAL_OBJECT_ID = 0x0003
_LID_CLEAN_GLOBAL_OBJECT_ID = 0x0023
_LID_WHERE = 0x0002
_LID_SEQUENCE = 0x8201
_LID_LOCATION = 0x8208
_LID_START_WHOLE = 0x820D
_LID_END_WHOLE = 0x820E
_LID_SUB_TYPE = 0x8215  # all-day flag
_LID_RECURRING = 0x8223
_LID_RECURRENCE_PATTERN = 0x8232
_LID_APPOINTMENT_RECUR = 0x8216
_LID_TIME_ZONE_STRUCT = 0x8233
_LID_TZ_DESCRIPTION = 0x8234
_LID_TZDEF_START = 0x825E
_LID_TO_ATTENDEES = 0x823B
_LID_CC_ATTENDEES = 0x823C

# MAPI tagged properties (MS-OXPROPS).
_TAG_MESSAGE_CLASS = 0x001A
_TAG_SUBJECT = 0x0037
_TAG_CLIENT_SUBMIT_TIME = 0x0039
_TAG_SUBJECT_PREFIX = 0x003D
_TAG_START_DATE = 0x0060
_TAG_END_DATE = 0x0061
_TAG_SENT_REPR_NAME = 0x0042
_TAG_SENT_REPR_EMAIL = 0x0065
_TAG_CONVERSATION_TOPIC = 0x0070
_TAG_SENDER_NAME = 0x0C1A
_TAG_SENDER_EMAIL = 0x0C1F
_TAG_RECIPIENT_TYPE = 0x0C15
_TAG_DISPLAY_NAME = 0x3001
_TAG_EMAIL_ADDRESS = 0x3003
_TAG_SMTP_ADDRESS = 0x39FE
_TAG_SENDER_SMTP = 0x5D01
_TAG_SENT_REPR_SMTP = 0x5D02

# TNEF attribute ids (MS-OXTNEF 2.1.3.2).
_ATT_MESSAGE_CLASS = 0x8008
_ATT_SUBJECT = 0x8004
_ATT_DATE_SENT = 0x8005
_ATT_DATE_START = 0x0006
_ATT_DATE_END = 0x0007
_ATT_RECIP_TABLE = 0x9004

_VCAL_UID_MARKER = b"vCal-Uid\x01\x00\x00\x00"
_GOID_HEADER_LEN = 40  # class id 16 + instance date 4 + creation time 8 + reserved 8 + size 4

_CLASS_MAP: dict[str, tuple[str, str | None]] = {
    "ipm.schedule.meeting.request": ("REQUEST", None),
    "ipm.microsoft schedule.mtgreq": ("REQUEST", None),
    "ipm.schedule.meeting.resp.pos": ("REPLY", "ACCEPTED"),
    "ipm.microsoft schedule.mtgrespp": ("REPLY", "ACCEPTED"),
    "ipm.schedule.meeting.resp.neg": ("REPLY", "DECLINED"),
    "ipm.microsoft schedule.mtgrespn": ("REPLY", "DECLINED"),
    "ipm.schedule.meeting.resp.tent": ("REPLY", "TENTATIVE"),
    "ipm.microsoft schedule.mtgrespa": ("REPLY", "TENTATIVE"),
    "ipm.schedule.meeting.canceled": ("CANCEL", None),
    "ipm.microsoft schedule.mtgcncl": ("CANCEL", None),
}

_EMAIL_IN_TEXT = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


@dataclass(frozen=True, slots=True)
class TnefContext:
    """What the enclosing mail says, used where the TNEF stream is silent."""

    from_address: str = ""
    to_addresses: tuple[str, ...] = ()
    cc_addresses: tuple[str, ...] = ()
    subject: str = ""
    date: datetime | None = None


@dataclass(frozen=True, slots=True)
class TnefResult:
    """``text`` is a complete VCALENDAR (CRLF lines) or ``None`` with ``problem`` set."""

    text: str | None
    method: str | None
    problem: str | None
    warnings: tuple[str, ...]
    from_embedded_ics: bool = False


def _fail(problem: str, warnings: Sequence[str] = ()) -> TnefResult:
    return TnefResult(None, None, problem, tuple(warnings))


class _Props:
    """Index of the MAPI properties of one TNEF message."""

    def __init__(self, tnef: Any) -> None:
        self.tagged: dict[int, Any] = {}
        self.named: dict[tuple[str, int], Any] = {}
        for attr in getattr(tnef, "mapiprops", []):
            guid = str(attr.guid).lower() if attr.guid else ""
            if guid and attr.guid_prop is not None:
                self.named.setdefault((guid, int(attr.guid_prop)), attr)
            elif not guid:
                self.tagged.setdefault(int(attr.name), attr)
        self.attributes: dict[int, Any] = {}
        for obj in getattr(tnef, "msgprops", []):
            self.attributes.setdefault(int(obj.name), obj.data)

    def value(self, attr: Any) -> Any:
        if attr is None:
            return None
        try:
            return attr.data
        except Exception:  # tnefparse raises bare errors on odd property types
            return None

    def tag(self, tag: int) -> Any:
        return self.value(self.tagged.get(tag))

    def lid(self, guid: str, lid: int) -> Any:
        return self.value(self.named.get((guid, lid)))

    def lid_raw(self, guid: str, lid: int) -> bytes | None:
        attr = self.named.get((guid, lid))
        if attr is None:
            return None
        raw = attr.raw_data
        if isinstance(raw, list):
            return b"".join(x for x in raw if isinstance(x, bytes))
        return raw if isinstance(raw, bytes) else None

    def text(self, *values: Any) -> str:
        for v in values:
            if isinstance(v, str) and v.strip():
                return v.strip()
        return ""


def _uid_from_goid(goid: bytes) -> tuple[str, str | None]:
    """(UID, occurrence date or None) from a PidLid(Clean)GlobalObjectId blob."""
    if len(goid) < _GOID_HEADER_LEN:
        raise ValueError("global object id shorter than its fixed header")
    size = int.from_bytes(goid[36:40], "little")
    blob = goid[: _GOID_HEADER_LEN + size]
    data = blob[_GOID_HEADER_LEN:]
    year = int.from_bytes(goid[16:18], "big")
    occurrence = f"{year:04d}-{goid[18]:02d}-{goid[19]:02d}" if year else None
    if data.startswith(_VCAL_UID_MARKER):
        # An iCalendar UID that Outlook wrapped: give the original back so replies match.
        return data[len(_VCAL_UID_MARKER) :].rstrip(b"\x00").decode("utf-8", "replace"), occurrence
    clean = blob[:16] + b"\x00\x00\x00\x00" + blob[20:]
    return clean.hex().upper(), occurrence


def _utc(value: Any) -> str | None:
    if isinstance(value, datetime) and value.year > 1601:
        return value.strftime("%Y%m%dT%H%M%SZ")
    return None


_ESCAPES = str.maketrans({"\\": "\\\\", ";": "\\;", ",": "\\,", "\n": "\\n", "\r": ""})


def _escape(text: str) -> str:
    """RFC 5545 section 3.3.11 TEXT escaping."""
    return text.translate(_ESCAPES)


def _param(text: str) -> str:
    """A quoted parameter value (RFC 5545 section 3.2); DQUOTE is not allowed inside."""
    cleaned = re.sub(r'["\x00-\x1f\x7f]', "", text)
    return f'"{cleaned}"'


def _fold(line: str) -> str:
    """Fold at 75 octets (RFC 5545 section 3.1) without splitting a UTF-8 sequence."""
    out: list[str] = []
    current = ""
    size = 0
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > 75:
            out.append(current)
            current, size = " ", 1
        current += ch
        size += n
    out.append(current)
    return "\r\n".join(out)


def _cal_address(name: str, addr: str, params: str = "") -> str:
    cn = f";CN={_param(name)}" if name else ""
    return f"{cn}{params}:mailto:{addr}"


def _recipients(props: _Props, ctx: TnefContext) -> list[tuple[str, str, str]]:
    """(name, address, ROLE) of the invitees."""
    out: list[tuple[str, str, str]] = []
    table = props.attributes.get(_ATT_RECIP_TABLE)
    if isinstance(table, list):
        for row in table:
            fields = {int(a.name): a for a in row if not a.guid}
            addr = ""
            for tag in (_TAG_SMTP_ADDRESS, _TAG_EMAIL_ADDRESS):
                v = props.value(fields.get(tag))
                if isinstance(v, str) and "@" in v:
                    addr = normalise(v)
                    break
            if not addr:
                continue
            name = props.value(fields.get(_TAG_DISPLAY_NAME))
            rtype = props.value(fields.get(_TAG_RECIPIENT_TYPE))
            role = "OPT-PARTICIPANT" if rtype == 2 else "REQ-PARTICIPANT"
            out.append((name if isinstance(name, str) else "", addr, role))
    if out:
        return out
    for lid, role, fallback in (
        (_LID_TO_ATTENDEES, "REQ-PARTICIPANT", ctx.to_addresses),
        (_LID_CC_ATTENDEES, "OPT-PARTICIPANT", ctx.cc_addresses),
    ):
        text = props.lid(_PSETID_APPOINTMENT, lid)
        found = _EMAIL_IN_TEXT.findall(text) if isinstance(text, str) else []
        for addr in found or fallback:
            norm = normalise(addr)
            if norm and all(norm != o[1] for o in out):
                out.append(("", norm, role))
    return out


def _tzid(props: _Props) -> str:
    """Windows time zone key name from PidLidAppointmentTimeZoneDefinitionStartDisplay."""
    blob = props.lid_raw(_PSETID_APPOINTMENT, _LID_TZDEF_START)
    if blob and len(blob) >= 8:
        count = int.from_bytes(blob[6:8], "little")
        name = blob[8 : 8 + 2 * count].decode("utf-16-le", "replace").strip()
        if name:
            return name
    description = props.text(props.lid(_PSETID_APPOINTMENT, _LID_TZ_DESCRIPTION))
    return description or "Outlook time zone"


def _series(props: _Props) -> tuple[list[str], list[str]]:
    """(DTSTART/DTEND/RRULE/EXDATE lines, VTIMEZONE lines) of a recurring meeting."""
    blob = props.lid_raw(_PSETID_APPOINTMENT, _LID_APPOINTMENT_RECUR)
    if not blob:
        raise RecurrenceError("no PidLidAppointmentRecur")
    tzstruct = props.lid_raw(_PSETID_APPOINTMENT, _LID_TIME_ZONE_STRUCT)
    if not tzstruct:
        raise RecurrenceError("no PidLidTimeZoneStruct for the local times of the rule")
    rec = parse_recurrence(blob)
    tzid = _tzid(props)
    param = f";TZID={_param(tzid)}" if re.search(r"[;:,]", tzid) else f";TZID={tzid}"
    fmt = "%Y%m%dT%H%M%S"
    rule = rec.rrule
    if rec.until_local is not None:
        # UNTIL is UTC when DTSTART has a TZID (RFC 5545 section 3.3.10).  Using the
        # standard offset gives an instant at or after the last occurrence, never before.
        until = rec.until_local - timedelta(minutes=utc_offset_minutes(tzstruct))
        rule += f";UNTIL={until:%Y%m%dT%H%M%SZ}"
    lines = [
        f"DTSTART{param}:{rec.first_start:{fmt}}",
        f"DTEND{param}:{rec.first_start + rec.duration:{fmt}}",
        f"RRULE:{rule}",
    ]
    if rec.exdates:
        lines.append(f"EXDATE{param}:" + ",".join(f"{d:{fmt}}" for d in rec.exdates))
    return lines, vtimezone(tzid, tzstruct)


def _embedded_ics(tnef: Any) -> str | None:
    for att in getattr(tnef, "attachments", []):
        data = getattr(att, "data", b"")
        try:
            name = str(att.long_filename() or "")
        except Exception:
            name = ""
        if isinstance(data, bytes) and (
            name.lower().endswith(".ics") or data.lstrip()[:15].upper() == b"BEGIN:VCALENDAR"
        ):
            return data.decode("utf-8", "replace")
    return None


def tnef_to_ical(data: bytes, ctx: TnefContext) -> TnefResult:
    """Convert one TNEF stream to iCalendar text; never raises."""
    try:
        from tnefparse.tnef import TNEF

        tnef = TNEF(data, do_checksum=False)
    except Exception as exc:
        return _fail(f"TNEF stream could not be decoded: {type(exc).__name__}: {exc}")
    try:
        return _convert(tnef, ctx)
    except Exception as exc:  # a corrupt property table must not stop the message
        return _fail(f"TNEF meeting could not be converted: {type(exc).__name__}: {exc}")


def _convert(tnef: Any, ctx: TnefContext) -> TnefResult:
    warnings: list[str] = []
    ics = _embedded_ics(tnef)
    if ics is not None:
        return TnefResult(ics, None, None, ("TNEF carried an embedded .ics attachment",), True)

    props = _Props(tnef)
    klass = props.text(props.tag(_TAG_MESSAGE_CLASS), props.attributes.get(_ATT_MESSAGE_CLASS))
    if not klass:
        return _fail("TNEF has no message class; not a meeting")
    mapped = _CLASS_MAP.get(klass.lower())
    if mapped is None:
        return _fail(f"TNEF message class {klass!r} is not a meeting request or response")
    method, partstat = mapped

    goid = props.lid_raw(_PSETID_MEETING, _LID_CLEAN_GLOBAL_OBJECT_ID) or props.lid_raw(
        _PSETID_MEETING, _LID_GLOBAL_OBJECT_ID
    )
    if not goid:
        return _fail(f"TNEF {klass} has no PidLidGlobalObjectId; the meeting cannot be identified")
    uid, occurrence = _uid_from_goid(goid)
    if occurrence:
        warnings.append(
            f"TNEF names the occurrence of {occurrence}; its time is unknown, "
            "so the message is treated as applying to the series"
        )

    recurring = props.lid(_PSETID_APPOINTMENT, _LID_RECURRING) is True
    series: list[str] = []
    timezone: list[str] = []
    if recurring and method == "REQUEST":
        # A REQUEST must carry the rule; REPLY/CANCEL name the series by UID alone.
        pattern = props.text(props.lid(_PSETID_APPOINTMENT, _LID_RECURRENCE_PATTERN))
        try:
            series, timezone = _series(props)
        except RecurrenceError as exc:
            return _fail(
                f"TNEF recurring meeting request ({pattern or 'pattern unknown'}) cannot be "
                f"converted faithfully: {exc}",
                warnings,
            )

    start = _utc(props.lid(_PSETID_APPOINTMENT, _LID_START_WHOLE)) or _utc(
        props.tag(_TAG_START_DATE)
    )
    end = _utc(props.lid(_PSETID_APPOINTMENT, _LID_END_WHOLE)) or _utc(props.tag(_TAG_END_DATE))
    if start is None and method != "CANCEL":
        # attDateStart is local time of the sender with no zone: unusable as UTC.
        return _fail(f"TNEF {klass} has no start time", warnings)
    if props.lid(_PSETID_APPOINTMENT, _LID_SUB_TYPE) is True:
        warnings.append("TNEF all-day meeting expressed as UTC date-times")

    subject = props.text(props.tag(_TAG_SUBJECT), props.attributes.get(_ATT_SUBJECT))
    prefix = props.text(props.tag(_TAG_SUBJECT_PREFIX))
    if prefix and subject.startswith(prefix):
        subject = subject[len(prefix) :]
    summary = props.text(props.tag(_TAG_CONVERSATION_TOPIC), subject, ctx.subject)
    location = props.text(
        props.lid(_PSETID_APPOINTMENT, _LID_LOCATION), props.lid(_PSETID_MEETING, _LID_WHERE)
    )
    sequence = props.lid(_PSETID_APPOINTMENT, _LID_SEQUENCE)
    stamp = (
        _utc(props.tag(_TAG_CLIENT_SUBMIT_TIME))
        or _utc(props.attributes.get(_ATT_DATE_SENT))
        or (
            _utc(ctx.date.astimezone(UTC).replace(tzinfo=None))
            if ctx.date and ctx.date.tzinfo
            else None
        )
    )
    if stamp is None:
        stamp = start or "19700101T000000Z"
        warnings.append("TNEF has no send time; DTSTAMP set from the start time")

    sender_name = props.text(props.tag(_TAG_SENT_REPR_NAME), props.tag(_TAG_SENDER_NAME))
    sender_addr = ""
    for candidate in (
        props.tag(_TAG_SENT_REPR_SMTP),
        props.tag(_TAG_SENDER_SMTP),
        props.tag(_TAG_SENT_REPR_EMAIL),
        props.tag(_TAG_SENDER_EMAIL),
    ):
        if isinstance(candidate, str) and "@" in candidate:
            sender_addr = normalise(candidate)
            break
    if not sender_addr:
        sender_addr = ctx.from_address
        if sender_addr:
            warnings.append("TNEF names no SMTP sender; the mail From address is used")
    if not sender_addr:
        return _fail(f"TNEF {klass} has no sender address", warnings)

    lines = [
        "BEGIN:VCALENDAR",
        "PRODID:-//imip-gateway//TNEF conversion//EN",
        "VERSION:2.0",
        f"METHOD:{method}",
        *timezone,
        "BEGIN:VEVENT",
        f"UID:{_escape(uid)}",
        f"DTSTAMP:{stamp}",
    ]
    if isinstance(sequence, int) and sequence >= 0:
        lines.append(f"SEQUENCE:{sequence}")
    if series:
        lines += series
    else:
        if start:
            lines.append(f"DTSTART:{start}")
        if end:
            lines.append(f"DTEND:{end}")
    if summary:
        lines.append(f"SUMMARY:{_escape(summary)}")
    if location:
        lines.append(f"LOCATION:{_escape(location)}")
    if method == "REPLY":
        # The reply goes to the organiser; MS-OXCICAL responses carry no organiser.
        if ctx.to_addresses:
            lines.append("ORGANIZER" + _cal_address("", ctx.to_addresses[0]))
            warnings.append("TNEF reply names no organiser; the first To address is used")
        lines.append("ATTENDEE" + _cal_address(sender_name, sender_addr, f";PARTSTAT={partstat}"))
    else:
        lines.append("ORGANIZER" + _cal_address(sender_name, sender_addr))
        for name, addr, role in _recipients(props, ctx):
            params = f";ROLE={role}"
            if method == "REQUEST":
                params += ";PARTSTAT=NEEDS-ACTION;RSVP=TRUE"
            lines.append("ATTENDEE" + _cal_address(name, addr, params))
        if method == "CANCEL":
            lines.append("STATUS:CANCELLED")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    text = "\r\n".join(_fold(line) for line in lines) + "\r\n"
    return TnefResult(text, method, None, tuple(warnings))
