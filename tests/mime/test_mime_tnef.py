"""gateway.mime.tnef: Outlook TNEF meetings become iCalendar, or a clear problem.

The corpus TNEF files are LGPL (not copyable into tests), so the streams here are
written by a small TNEF encoder following MS-OXTNEF: the same containers and MAPI
property encodings Outlook produces, decoded by the real ``tnefparse``.  The corpus
files themselves are exercised by ``tools/corpus_report.py``.
"""

from __future__ import annotations

import base64
import struct
import uuid
from datetime import UTC, datetime

import icalendar
import pytest

from gateway.mime.extract import extract
from gateway.mime.tnef import TnefContext, tnef_to_ical

PSETID_MEETING = uuid.UUID("6ed8da90-450b-101b-98da-00aa003f1305")
PSETID_APPOINTMENT = uuid.UUID("00062002-0000-0000-c000-000000000046")
GOID_CLASS = bytes.fromhex("040000008200E00074C5B7101A82E008")

PT_LONG, PT_BOOL, PT_STRING8, PT_UNICODE, PT_SYSTIME, PT_BINARY = (
    0x0003,
    0x000B,
    0x001E,
    0x001F,
    0x0040,
    0x0102,
)


def _filetime(dt: datetime) -> bytes:
    ticks = int(dt.timestamp() * 10_000_000) + 116444736000000000
    return struct.pack("<Q", ticks)


def _value(ptype: int, value: object) -> bytes:
    if ptype == PT_LONG:
        assert isinstance(value, int)
        return struct.pack("<i", value)
    if ptype == PT_BOOL:
        return struct.pack("<HH", 1 if value else 0, 0)
    if ptype == PT_SYSTIME:
        assert isinstance(value, datetime)
        return _filetime(value)
    if ptype == PT_STRING8:
        data = str(value).encode("cp1252") + b"\x00"
    elif ptype == PT_UNICODE:
        data = str(value).encode("utf-16-le") + b"\x00\x00"
    else:
        assert isinstance(value, bytes)
        data = value
    pad = b"\x00" * (-len(data) % 4)
    return struct.pack("<II", 1, len(data)) + data + pad


def mapi_props(props: list[tuple[int, int | tuple[uuid.UUID, int], object]]) -> bytes:
    """MS-OXTNEF 2.1.3.4 property list: (type, tag or (guid, lid), value)."""
    out = struct.pack("<I", len(props))
    named_id = 0x8000
    for ptype, tag, value in props:
        if isinstance(tag, tuple):
            guid, lid = tag
            out += struct.pack("<HH", ptype, named_id) + guid.bytes_le + struct.pack("<II", 0, lid)
            named_id += 1
        else:
            out += struct.pack("<HH", ptype, tag)
        out += _value(ptype, value)
    return out


def attribute(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
    checksum = sum(data) & 0xFFFF
    return (
        struct.pack("<BHHI", level, attr_id, attr_type, len(data))
        + data
        + struct.pack("<H", checksum)
    )


def tnef_stream(
    message_class: str,
    props: list,
    recipients: list[list] | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:  # type: ignore[type-arg]
    out = struct.pack("<IH", 0x223E9F78, 0x0001)
    out += attribute(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += attribute(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))
    out += attribute(1, 0x8008, 0x0007, message_class.encode("ascii") + b"\x00")
    if recipients is not None:
        table = struct.pack("<I", len(recipients))
        for row in recipients:
            table += mapi_props(row)
        out += attribute(1, 0x9004, 0x0006, table)
    out += attribute(1, 0x9003, 0x0006, mapi_props(props))
    if attachment is not None:
        name, data = attachment
        out += attribute(2, 0x9002, 0x0006, b"\x00" * 14)
        out += attribute(2, 0x8010, 0x0007, name.encode("ascii") + b"\x00")
        out += attribute(2, 0x800F, 0x0006, data)
    return out


def goid(data: bytes, instance: bytes = b"\x00\x00\x00\x00") -> bytes:
    return GOID_CLASS + instance + b"\x11" * 8 + b"\x00" * 8 + struct.pack("<I", len(data)) + data


START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
END = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
PLAIN_GOID = goid(b"\x10\x00\x00\x00" + bytes(range(16)))
VCAL_GOID = goid(b"vCal-Uid\x01\x00\x00\x00" + b"abc-123@example.org\x00")


def meeting_props(goid_value: bytes = PLAIN_GOID, recurring: bool = False) -> list:  # type: ignore[type-arg]
    return [
        (PT_STRING8, 0x0070, "Quarterly review"),
        (PT_SYSTIME, 0x0039, datetime(2026, 2, 20, 8, 0, tzinfo=UTC)),
        (PT_UNICODE, 0x0042, "Olga Organiser"),
        (PT_UNICODE, 0x5D02, "Olga@Example.org"),
        (PT_BINARY, (PSETID_MEETING, 0x0023), goid_value),
        (PT_BINARY, (PSETID_MEETING, 0x0003), goid_value),
        (PT_SYSTIME, (PSETID_APPOINTMENT, 0x820D), START),
        (PT_SYSTIME, (PSETID_APPOINTMENT, 0x820E), END),
        (PT_STRING8, (PSETID_APPOINTMENT, 0x8208), "Room 1, Building; B"),
        (PT_LONG, (PSETID_APPOINTMENT, 0x8201), 3),
        (PT_BOOL, (PSETID_APPOINTMENT, 0x8223), recurring),
        (PT_STRING8, (PSETID_APPOINTMENT, 0x8232), "every Monday" if recurring else ""),
    ]


RECIPIENTS = [
    [(PT_STRING8, 0x3001, "Ann"), (PT_STRING8, 0x39FE, "ann@example.net"), (PT_LONG, 0x0C15, 1)],
    [(PT_STRING8, 0x3001, "Bob"), (PT_STRING8, 0x39FE, "bob@example.net"), (PT_LONG, 0x0C15, 2)],
]
CTX = TnefContext(from_address="olga@example.org", to_addresses=("ann@example.net",))


def _event(text: str) -> icalendar.Event:
    cal = icalendar.Calendar.from_ical(text)
    (event,) = [c for c in cal.walk() if c.name == "VEVENT"]
    return event


def test_meeting_request_converts_to_request_with_attendees() -> None:
    stream = tnef_stream("IPM.Microsoft Schedule.MtgReq", meeting_props(), RECIPIENTS)
    result = tnef_to_ical(stream, CTX)
    assert result.problem is None, result.problem
    assert result.method == "REQUEST"
    assert result.text is not None
    cal = icalendar.Calendar.from_ical(result.text)
    assert cal["METHOD"] == "REQUEST"
    event = _event(result.text)
    assert str(event["UID"]) == PLAIN_GOID.hex().upper()
    assert event["DTSTART"].dt == START
    assert event["DTEND"].dt == END
    assert str(event["SUMMARY"]) == "Quarterly review"
    assert str(event["LOCATION"]) == "Room 1, Building; B"
    assert int(event["SEQUENCE"]) == 3
    assert str(event["ORGANIZER"]) == "mailto:olga@example.org"
    attendees = event["ATTENDEE"]
    assert [str(a) for a in attendees] == ["mailto:ann@example.net", "mailto:bob@example.net"]
    assert [a.params["ROLE"] for a in attendees] == ["REQ-PARTICIPANT", "OPT-PARTICIPANT"]
    assert all(a.params["PARTSTAT"] == "NEEDS-ACTION" for a in attendees)


def test_uid_uses_clean_global_object_id_without_instance_date() -> None:
    with_date = goid(b"\x10\x00\x00\x00" + bytes(range(16)), instance=b"\x07\xea\x03\x09")
    props = meeting_props(with_date)
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Canceled", props), CTX)
    assert result.method == "CANCEL"
    assert result.text is not None
    event = _event(result.text)
    assert str(event["UID"]) == PLAIN_GOID.hex().upper()
    assert str(event["STATUS"]) == "CANCELLED"
    assert any("2026-03-09" in w for w in result.warnings)


def test_accepted_response_with_vcal_uid_becomes_reply_accepted() -> None:
    props = [*meeting_props(VCAL_GOID), (PT_UNICODE, 0x001A, "IPM.Schedule.Meeting.Resp.Pos")]
    stream = tnef_stream("IPM.Microsoft Schedule.MtgRespP", props)
    result = tnef_to_ical(stream, CTX)
    assert result.method == "REPLY"
    assert result.text is not None
    event = _event(result.text)
    # The UID the organiser's client sent comes back unchanged: the reply matches.
    assert str(event["UID"]) == "abc-123@example.org"
    (attendee,) = [event["ATTENDEE"]]
    assert str(attendee) == "mailto:olga@example.org"
    assert attendee.params["PARTSTAT"] == "ACCEPTED"
    assert str(event["ORGANIZER"]) == "mailto:ann@example.net"


def test_declined_and_tentative_responses_map_partstat() -> None:
    for klass, partstat in (
        ("IPM.Schedule.Meeting.Resp.Neg", "DECLINED"),
        ("IPM.Schedule.Meeting.Resp.Tent", "TENTATIVE"),
    ):
        result = tnef_to_ical(tnef_stream(klass, meeting_props(VCAL_GOID)), CTX)
        assert result.text is not None
        assert _event(result.text)["ATTENDEE"].params["PARTSTAT"] == partstat


def test_recurring_request_without_its_rule_is_a_problem_not_a_single_event() -> None:
    stream = tnef_stream("IPM.Schedule.Meeting.Request", meeting_props(recurring=True))
    result = tnef_to_ical(stream, CTX)
    assert result.text is None
    assert result.problem is not None
    assert "recurring" in result.problem
    assert "every Monday" in result.problem
    assert "PidLidAppointmentRecur" in result.problem


def _min1601(dt: datetime) -> int:
    return int((dt - datetime(1601, 1, 1)).total_seconds() // 60)


def recur_blob(
    freq: int,
    pattern: int,
    period: int,
    specific: bytes,
    *,
    end_type: int = 0x2023,
    count: int = 10,
    first_dow: int = 1,
    deleted: tuple[datetime, ...] = (),
    modified: tuple[datetime, ...] = (),
    start: datetime = datetime(2026, 3, 2),
    end: datetime = datetime(4500, 8, 31),
    offsets: tuple[int, int] = (600, 660),
) -> bytes:
    """AppointmentRecurrencePattern (MS-OXOCAL 2.2.1.44.5)."""
    blob = struct.pack("<HHHHHIII", 0x3004, 0x3004, freq, pattern, 0, 0, period, 0) + specific
    blob += struct.pack("<III", end_type, count, first_dow)
    blob += struct.pack("<I", len(deleted)) + b"".join(
        struct.pack("<I", _min1601(d)) for d in deleted
    )
    blob += struct.pack("<I", len(modified)) + b"".join(
        struct.pack("<I", _min1601(d)) for d in modified
    )
    blob += struct.pack("<II", _min1601(start), _min1601(end))
    blob += struct.pack("<IIII", 0x3006, 0x3009, *offsets) + struct.pack("<H", 0) + b"\x00" * 8
    return blob


# W. Europe: UTC+1, DST from the last Sunday of March 02:00 to the last Sunday of October 03:00.
W_EUROPE_TZSTRUCT = struct.pack(
    "<iiiH8HH8H", -60, 0, -60, 0, 0, 10, 0, 5, 3, 0, 0, 0, 0, 0, 3, 0, 5, 2, 0, 0, 0
)
TZ_NAME = "W. Europe Standard Time"
TZDEF = (
    b"\x02\x01"
    + struct.pack("<HHH", 0x30, 2, len(TZ_NAME))
    + TZ_NAME.encode("utf-16-le")
    + b"\x00" * 8
)


def recurring_props(blob: bytes) -> list:  # type: ignore[type-arg]
    return [
        *meeting_props(recurring=True),
        (PT_BINARY, (PSETID_APPOINTMENT, 0x8216), blob),
        (PT_BINARY, (PSETID_APPOINTMENT, 0x8233), W_EUROPE_TZSTRUCT),
        (PT_BINARY, (PSETID_APPOINTMENT, 0x825E), TZDEF),
    ]


def test_recurring_request_becomes_rrule_exdate_and_vtimezone() -> None:
    blob = recur_blob(
        0x200B,
        0x1,
        2,
        struct.pack("<I", 0b0001010),  # Monday and Wednesday
        end_type=0x2021,
        end=datetime(2026, 6, 29),
        deleted=(datetime(2026, 3, 16),),
    )
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Request", recurring_props(blob)), CTX)
    assert result.problem is None, result.problem
    assert result.text is not None
    lines = result.text.replace("\r\n ", "").split("\r\n")
    assert f"DTSTART;TZID={TZ_NAME}:20260302T100000" in lines
    assert f"DTEND;TZID={TZ_NAME}:20260302T110000" in lines
    # UNTIL in UTC (RFC 5545 3.3.10): 10:00 local on 29 June at the standard offset.
    assert "RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;WKST=MO;UNTIL=20260629T090000Z" in lines
    assert f"EXDATE;TZID={TZ_NAME}:20260316T100000" in lines
    assert f"TZID:{TZ_NAME}" in lines
    assert "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU" in lines
    assert "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU" in lines
    assert "TZOFFSETTO:+0200" in lines
    assert "TZOFFSETTO:+0100" in lines
    event = _event(result.text)
    assert event["DTSTART"].dt.utcoffset().total_seconds() == 3600


@pytest.mark.parametrize(
    ("freq", "pattern", "period", "specific", "extra", "expected"),
    [
        (0x200A, 0x0, 2880, b"", {}, "FREQ=DAILY;INTERVAL=2"),
        (
            0x200A,
            0x1,
            1,
            struct.pack("<I", 0b0111110),
            {},
            "FREQ=WEEKLY;INTERVAL=1;BYDAY=MO,TU,WE,TH,FR;WKST=MO",
        ),
        (
            0x200C,
            0x2,
            1,
            struct.pack("<I", 15),
            {"end_type": 0x2022, "count": 5},
            "FREQ=MONTHLY;INTERVAL=1;BYMONTHDAY=15;COUNT=5",
        ),
        (
            0x200C,
            0x3,
            1,
            struct.pack("<II", 0b100, 2),
            {},
            "FREQ=MONTHLY;INTERVAL=1;BYDAY=TU;BYSETPOS=2",
        ),
        (0x200C, 0x4, 3, struct.pack("<I", 31), {}, "FREQ=MONTHLY;INTERVAL=3;BYMONTHDAY=-1"),
        (
            0x200D,
            0x3,
            12,
            struct.pack("<II", 0b10, 5),
            {},
            "FREQ=YEARLY;INTERVAL=1;BYMONTH=3;BYDAY=MO;BYSETPOS=-1",
        ),
    ],
)
def test_recurrence_patterns(
    freq: int, pattern: int, period: int, specific: bytes, extra: dict, expected: str
) -> None:  # type: ignore[type-arg]
    blob = recur_blob(freq, pattern, period, specific, **extra)
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Request", recurring_props(blob)), CTX)
    assert result.text is not None, result.problem
    assert f"RRULE:{expected}" in result.text.replace("\r\n ", "").split("\r\n")


def test_recurring_request_with_modified_occurrences_is_a_problem() -> None:
    blob = recur_blob(0x200B, 0x1, 1, struct.pack("<I", 0b10), modified=(datetime(2026, 3, 9),))
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Request", recurring_props(blob)), CTX)
    assert result.text is None
    assert result.problem is not None
    assert "modified occurrence" in result.problem


def test_truncated_recurrence_blob_is_a_problem() -> None:
    blob = recur_blob(0x200B, 0x1, 1, struct.pack("<I", 0b10))[:30]
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Request", recurring_props(blob)), CTX)
    assert result.problem is not None
    assert "truncated" in result.problem


def test_reply_to_a_recurring_series_needs_no_rule() -> None:
    stream = tnef_stream("IPM.Schedule.Meeting.Resp.Pos", meeting_props(VCAL_GOID, recurring=True))
    result = tnef_to_ical(stream, CTX)
    assert result.method == "REPLY"
    assert result.text is not None
    assert "RRULE" not in result.text


def test_task_request_is_a_clear_problem() -> None:
    result = tnef_to_ical(tnef_stream("IPM.TaskRequest", [(PT_STRING8, 0x0070, "Task")]), CTX)
    assert result.text is None
    assert (
        result.problem
        == "TNEF message class 'IPM.TaskRequest' is not a meeting request or response"
    )


def test_missing_global_object_id_is_a_problem() -> None:
    props = [
        p for p in meeting_props() if not (isinstance(p[1], tuple) and p[1][0] == PSETID_MEETING)
    ]
    result = tnef_to_ical(tnef_stream("IPM.Schedule.Meeting.Request", props), CTX)
    assert result.problem is not None
    assert "GlobalObjectId" in result.problem


def test_garbage_is_a_problem_not_an_exception() -> None:
    for data in (b"", b"not tnef at all", struct.pack("<IH", 0x223E9F78, 1) + b"\xff" * 40):
        result = tnef_to_ical(data, CTX)
        assert result.text is None
        assert result.problem


def test_embedded_ics_attachment_is_used_as_is() -> None:
    ics = b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"
    stream = tnef_stream("IPM.Note", [(PT_STRING8, 0x0070, "x")], attachment=("meeting.ics", ics))
    result = tnef_to_ical(stream, CTX)
    assert result.from_embedded_ics
    assert result.text == ics.decode()


def test_winmail_dat_in_a_mail_becomes_a_tnef_calendar_part() -> None:
    stream = tnef_stream("IPM.Microsoft Schedule.MtgReq", meeting_props(), RECIPIENTS)
    b64 = base64.encodebytes(stream).decode()
    raw = (
        "From: Olga <olga@example.org>\r\nTo: ann@example.net\r\nSubject: Quarterly review\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n"
        '--B\r\nContent-Type: application/ms-tnef; name="winmail.dat"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="winmail.dat"\r\n\r\n'
        f"{b64}\r\n--B--\r\n"
    ).encode()
    ex = extract(raw)
    assert ex.problems == ()
    (p,) = ex.parts
    assert p.source == "tnef"
    assert p.method == "REQUEST"
    assert p.filename == "winmail.dat"
    assert "UID:" + PLAIN_GOID.hex().upper()[:60] in p.text.replace("\r\n ", "")


def test_unconvertible_winmail_dat_gives_extraction_problem() -> None:
    b64 = base64.encodebytes(b"garbage").decode()
    raw = (
        "From: a@example.org\r\nMIME-Version: 1.0\r\n"
        "Content-Type: application/ms-tnef\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        f"{b64}"
    ).encode()
    ex = extract(raw)
    assert ex.parts == ()
    assert len(ex.problems) == 1
    assert "TNEF" in ex.problems[0]
