"""gateway.mime.extract: every calendar part found, decoded and labelled; never raises."""

from __future__ import annotations

import base64
from pathlib import Path

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime.compose import GATEWAY_HEADER
from gateway.mime.extract import extract

CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"

CAL = (
    "BEGIN:VCALENDAR\r\n"
    "PRODID:-//test//EN\r\n"
    "VERSION:2.0\r\n"
    "METHOD:{method}\r\n"
    "BEGIN:VEVENT\r\n"
    "UID:{uid}\r\n"
    "SEQUENCE:{seq}\r\n"
    "DTSTAMP:20260101T100000Z\r\n"
    "DTSTART:20260105T100000Z\r\n"
    "SUMMARY:{summary}\r\n"
    "ORGANIZER:mailto:org@example.org\r\n"
    "ATTENDEE;CN=Att;PARTSTAT=NEEDS-ACTION:mailto:att@example.net\r\n"
    "END:VEVENT\r\n"
    "END:VCALENDAR\r\n"
)


def cal(method: str = "REQUEST", uid: str = "u1", seq: int = 0, summary: str = "Review") -> str:
    return CAL.format(method=method, uid=uid, seq=seq, summary=summary)


def mail(body: str, headers: str = "", top: str = "multipart/mixed; boundary=B0") -> bytes:
    text = (
        "From: Org <org@example.org>\r\n"
        "To: att@example.net\r\n"
        "Subject: test\r\n"
        "Message-ID: <m1@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        f"{headers}"
        f"Content-Type: {top}\r\n"
        "\r\n"
        f"{body}"
    )
    return text.encode("latin-1") if not text.isascii() else text.encode("ascii")


def part(ctype: str, payload: str, cte: str = "7bit", extra: str = "") -> str:
    return f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n{extra}\r\n{payload}\r\n"


def multipart(boundary: str, *parts: str) -> str:
    out = "".join(f"--{boundary}\r\n{p}" for p in parts)
    return out + f"--{boundary}--\r\n"


def test_base64_text_calendar_is_decoded_and_method_read_from_calendar() -> None:
    b64 = base64.encodebytes(cal("REPLY").encode()).decode()
    body = multipart("B0", part("TEXT/Calendar; method=REPLY; charset=utf-8", b64, "BASE64"))
    ex = extract(mail(body))
    assert len(ex.parts) == 1
    p = ex.parts[0]
    assert p.method == "REPLY"
    assert p.mime_method == "REPLY"
    assert p.content_type == "text/calendar"
    assert p.source == "text/calendar"
    assert p.text == cal("REPLY")
    assert ex.problems == ()


def test_quoted_printable_with_encoded_crlf_from_apple_mail_corpus() -> None:
    raw = (CORPUS / "apple" / "apple-mail-ical3-reply-accepted-qp-attachment.eml").read_bytes()
    assert b"=0D=0A" in raw  # the quirk under test
    ex = extract(raw)
    assert len(ex.parts) == 1
    p = ex.parts[0]
    assert p.method == "REPLY"
    assert p.text.startswith("BEGIN:VCALENDAR\r\n")
    assert "\r\r" not in p.text
    assert "\n\n" not in p.text
    assert all(line.endswith("\r") or not line for line in p.text.split("\n")[:-1])
    parsed = icalendar.Calendar.from_ical(p.text)
    assert parsed.get("METHOD") == "REPLY"


def test_invalid_quoted_printable_keeps_unencoded_equals_signs() -> None:
    # Perl MIME::Entity-style output: '=3D' mostly, but some '=' left raw.
    qp = (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:x1\r\n"
        "ATTENDEE;CN=3DSender;PARTSTAT=3DACCEPTED:mailto:s@example.com\r\n"
        "ATTENDEE;CN=Receiver;EMAIL=3Dr@example.com;CN=Cafe:mailto:r@example.com\r\n"
        "SUMMARY:caf=C3=A9 =\r\n long\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    body = multipart(
        "B0", part('text/calendar; charset="utf-8"; method="REQUEST"', qp, "quoted-printable")
    )
    ex = extract(mail(body))
    text = ex.parts[0].text
    assert "ATTENDEE;CN=Sender;PARTSTAT=ACCEPTED:mailto:s@example.com" in text
    # '=Re' and '=Ca' are not escapes: kept verbatim, not turned into bytes.
    assert "ATTENDEE;CN=Receiver;EMAIL=r@example.com;CN=Cafe:mailto:r@example.com" in text
    assert "SUMMARY:café  long" in text  # soft line break removed
    assert any("invalid quoted-printable" in w for w in ex.parts[0].warnings)


def test_valid_lowercase_qp_escapes_are_accepted_when_nothing_is_invalid() -> None:
    qp = cal(summary="CAFE").replace("=", "=3D").replace("CAFE", "caf=c3=a9")
    body = multipart(
        "B0", part("text/calendar; method=REQUEST; charset=UTF-8", qp, "quoted-printable")
    )
    ex = extract(mail(body))
    assert "SUMMARY:café" in ex.parts[0].text
    assert ex.parts[0].warnings == ()


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_declared_single_byte_charset_is_decoded(charset: str) -> None:
    data = cal(summary="Réunion über Straße").encode(charset)
    body = multipart(
        "B0",
        part(f"text/calendar; method=REQUEST; charset={charset}", data.decode("latin-1"), "8bit"),
    )
    ex = extract(mail(body))
    p = ex.parts[0]
    assert "SUMMARY:Réunion über Straße" in p.text
    assert p.charset == charset


def test_undeclared_non_utf8_bytes_fall_back_to_latin1_with_warning() -> None:
    data = cal(summary="Caf\xe9").encode("latin-1").decode("latin-1")
    body = multipart("B0", part("text/calendar; method=REQUEST", data, "8bit"))
    ex = extract(mail(body))
    p = ex.parts[0]
    assert "SUMMARY:Café" in p.text
    assert p.charset == "latin-1"
    assert any("latin-1" in w for w in p.warnings)


def test_wrong_declared_charset_falls_back_to_utf8() -> None:
    body = multipart(
        "B0",
        part("text/calendar; method=REQUEST; charset=x-nonsense", cal(summary="ok"), "7bit"),
    )
    ex = extract(mail(body))
    assert ex.parts[0].charset == "utf-8"
    assert any("unknown charset" in w for w in ex.parts[0].warnings)


def test_bom_is_stripped_and_line_endings_become_crlf() -> None:
    text = "\ufeff" + cal().replace("\r\n", "\n")
    b64 = base64.encodebytes(text.encode("utf-8")).decode()
    body = multipart("B0", part("text/calendar; method=REQUEST; charset=utf-8", b64, "base64"))
    p = extract(mail(body)).parts[0]
    assert p.text == cal()


def test_calendar_nested_three_levels_deep_is_found() -> None:
    inner = multipart(
        "B2", part("text/plain", "hello"), part("text/calendar; method=CANCEL", cal("CANCEL"))
    )
    middle = multipart(
        "B1",
        part("text/html", "<p>x</p>"),
        f"Content-Type: multipart/alternative; boundary=B2\r\n\r\n{inner}",
    )
    body = multipart(
        "B0",
        part("text/plain", "x"),
        f"Content-Type: multipart/related; boundary=B1\r\n\r\n{middle}",
    )
    ex = extract(mail(body))
    assert [p.method for p in ex.parts] == ["CANCEL"]


def test_application_ics_only_without_method_param() -> None:
    body = multipart(
        "B0",
        part("text/plain", "see attachment"),
        part(
            'application/ics; name="invite.ics"',
            cal(),
            "7bit",
            'Content-Disposition: attachment; filename="invite.ics"\r\n',
        ),
    )
    ex = extract(mail(body))
    p = ex.parts[0]
    assert p.source == "application/ics"
    assert p.method == "REQUEST"
    assert p.mime_method is None
    assert p.filename == "invite.ics"


def test_octet_stream_with_ics_filename_is_used_with_warning() -> None:
    b64 = base64.encodebytes(cal().encode()).decode()
    body = multipart(
        "B0",
        part(
            "application/octet-stream",
            b64,
            "base64",
            'Content-Disposition: attachment; filename="meeting.ICS"\r\n',
        ),
    )
    ex = extract(mail(body))
    p = ex.parts[0]
    assert p.source == "attachment"
    assert any("file name" in w for w in p.warnings)


def test_method_mismatch_prefers_calendar_and_warns() -> None:
    body = multipart("B0", part("text/calendar; method=REQUEST", cal("PUBLISH")))
    p = extract(mail(body)).parts[0]
    assert p.method == "PUBLISH"
    assert p.mime_method == "REQUEST"
    assert any("disagrees" in w for w in p.warnings)


def test_missing_method_in_calendar_is_reported_not_invented() -> None:
    body = multipart(
        "B0", part("text/calendar; method=REQUEST", cal().replace("METHOD:REQUEST\r\n", ""))
    )
    p = extract(mail(body)).parts[0]
    assert p.method is None
    assert p.mime_method == "REQUEST"
    assert any("no METHOD" in w for w in p.warnings)


def test_google_duplicate_text_calendar_and_invite_ics_kept_once() -> None:
    c = cal()
    alt = multipart(
        "B1", part("text/plain", "invite"), part("text/calendar; charset=UTF-8; method=REQUEST", c)
    )
    body = multipart(
        "B0",
        f"Content-Type: multipart/alternative; boundary=B1\r\n\r\n{alt}",
        part(
            'application/ics; name="invite.ics"',
            base64.encodebytes(c.encode()).decode(),
            "base64",
            'Content-Disposition: attachment; filename="invite.ics"\r\n',
        ),
    )
    ex = extract(mail(body))
    assert len(ex.parts) == 1
    assert ex.parts[0].source == "text/calendar"
    assert any("identical copy" in w for w in ex.warnings)


def test_same_uid_method_sequence_with_different_bytes_is_a_duplicate() -> None:
    a = cal()
    b = cal().replace("SUMMARY:Review", "SUMMARY:Review (copy)")
    body = multipart("B0", part("text/calendar; method=REQUEST", a), part("application/ics", b))
    ex = extract(mail(body))
    assert len(ex.parts) == 1
    assert any("same UID/METHOD/SEQUENCE" in w for w in ex.warnings)


def test_genuinely_different_parts_are_all_returned() -> None:
    body = multipart(
        "B0",
        part("text/calendar; method=REQUEST", cal(uid="a")),
        part("text/calendar; method=REQUEST", cal(uid="a", seq=1)),
        part("text/calendar; method=CANCEL", cal("CANCEL", uid="b")),
    )
    ex = extract(mail(body))
    assert [(p.index, p.method) for p in ex.parts] == [
        (0, "REQUEST"),
        (1, "REQUEST"),
        (2, "CANCEL"),
    ]


def test_several_vcalendars_in_one_part_are_split() -> None:
    text = cal(uid="a") + "\r\n" + cal("PUBLISH", uid="b")
    body = multipart("B0", part("text/calendar; method=REQUEST", text))
    ex = extract(mail(body))
    assert [p.method for p in ex.parts] == ["REQUEST", "PUBLISH"]
    assert ex.parts[0].text == cal(uid="a")
    assert ex.parts[1].text == cal("PUBLISH", uid="b")
    assert all(any("split" in w for w in p.warnings) for p in ex.parts)


def test_mail_without_calendar_gives_no_parts_and_no_problem() -> None:
    raw = (CORPUS / "apple" / "apple-mail-ical3-reply-missing-calendar-part.eml").read_bytes()
    ex = extract(raw)
    assert ex.parts == ()
    assert ex.problems == ()


def test_calendar_part_without_vcalendar_is_a_problem() -> None:
    body = multipart("B0", part("text/calendar; method=REQUEST", "not a calendar"))
    ex = extract(mail(body))
    assert ex.parts == ()
    assert any("no BEGIN:VCALENDAR" in p for p in ex.problems)


def test_calendar_above_size_limit_is_a_problem_not_a_part() -> None:
    body = multipart("B0", part("text/calendar; method=REQUEST", cal(summary="x" * 5000)))
    ex = extract(mail(body), max_calendar_bytes=1000)
    assert ex.parts == ()
    assert any("limit" in p for p in ex.problems)


def test_broken_boundary_with_calendar_text_is_an_explicit_problem() -> None:
    body = multipart("WRONG", part("text/calendar; method=REQUEST", cal()))
    ex = extract(mail(body, top="multipart/mixed; boundary=RIGHT"))
    assert ex.parts == ()
    assert any("malformed MIME" in p for p in ex.problems)


def test_single_part_message_that_is_itself_a_calendar() -> None:
    ex = extract(mail(cal("REFRESH"), top="text/calendar; method=REFRESH; charset=utf-8"))
    assert [p.method for p in ex.parts] == ["REFRESH"]


def test_headers_are_decoded() -> None:
    headers = (
        "Subject: =?utf-8?q?R=C3=A9union?= =?iso-8859-1?q?_=FCber?=\r\n"
        "Cc: =?utf-8?b?SsO8cmdlbg==?= <J@Example.NET>, b@example.net\r\n"
        "Reply-To: <reply@example.org>\r\n"
        "Sender: helper@example.org\r\n"
        "In-Reply-To: <orig@example.net>\r\n"
        "References: <a@x> <b@x>\r\n <orig@example.net>\r\n"
        "Date: Mon, 05 Jan 2026 10:00:00 +0100\r\n"
    )
    raw = mail(multipart("B0", part("text/plain", "x")), headers).replace(b"Subject: test\r\n", b"")
    ex = extract(raw)
    assert ex.subject == "Réunion über"
    assert ex.from_addresses == ("org@example.org",)
    assert ex.cc == ("j@example.net", "b@example.net")
    assert ex.reply_to == ("reply@example.org",)
    assert ex.sender == "helper@example.org"
    assert ex.to == ("att@example.net",)
    assert ex.message_id == "<m1@example.org>"
    assert ex.in_reply_to == ("<orig@example.net>",)
    assert ex.references == ("<a@x>", "<b@x>", "<orig@example.net>")
    assert ex.date is not None
    assert ex.date.utcoffset() is not None
    assert ex.date.isoformat() == "2026-01-05T10:00:00+01:00"


def test_encoded_word_cannot_smuggle_a_newline_into_subject() -> None:
    raw = mail(multipart("B0", part("text/plain", "x"))).replace(
        b"Subject: test", b"Subject: =?utf-8?q?hi=0D=0ABcc:_victim@x?="
    )
    ex = extract(raw)
    assert "\r" not in ex.subject
    assert "\n" not in ex.subject
    assert "Bcc" in ex.subject


def test_loop_signals_auto_submitted_precedence_and_our_marker() -> None:
    headers = (
        f"Auto-Submitted: Auto-Replied; owner=x\r\nPrecedence: Bulk\r\n{GATEWAY_HEADER}: 1\r\n"
    )
    ex = extract(mail(multipart("B0", part("text/plain", "x")), headers))
    assert ex.auto_submitted == "auto-replied"
    assert ex.is_auto_submitted
    assert ex.precedence == "bulk"
    assert ex.generated_by_us
    assert not ex.is_bounce


def test_plain_mail_has_no_loop_signals() -> None:
    ex = extract(mail(multipart("B0", part("text/calendar; method=REQUEST", cal()))))
    assert ex.auto_submitted is None
    assert not ex.is_auto_submitted
    assert not ex.generated_by_us
    assert not ex.is_bounce


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ((b"From: Org <org@example.org>", b"From: MAILER-DAEMON@mx.example.org"), True),
        ((b"From: Org <org@example.org>", b"From: Postmaster <postmaster@mx.example.org>"), True),
        ((b"Subject: test", b"Subject: test\r\nX-Failed-Recipients: a@b.example"), True),
        ((b"Subject: test", b"Subject: test"), False),
    ],
)
def test_bounce_signals(change: tuple[bytes, bytes], expected: bool) -> None:
    raw = mail(multipart("B0", part("text/plain", "x"))).replace(*change)
    assert extract(raw).is_bounce is expected


def test_calendar_in_forwarded_message_rfc822_is_found_with_warning() -> None:
    inner = mail(
        multipart("C0", part("text/calendar; method=REQUEST", cal())),
        top="multipart/mixed; boundary=C0",
    ).decode()
    body = multipart(
        "B0", part("text/plain", "fwd"), f"Content-Type: message/rfc822\r\n\r\n{inner}"
    )
    ex = extract(mail(body))
    assert len(ex.parts) == 1
    assert any("message/rfc822" in w for w in ex.parts[0].warnings)


def test_garbage_and_empty_input_never_raise() -> None:
    for raw in (b"", b"\x00\xff\xfe", b"Content-Type: multipart/mixed\r\n\r\n--", b"\r\n\r\n\r\n"):
        ex = extract(raw)
        assert ex.parts == ()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_appended_to_a_calendar_mail_never_raise(tail: bytes) -> None:
    raw = mail(multipart("B0", part("text/calendar; method=REQUEST", cal()))) + tail
    ex = extract(raw)
    assert isinstance(ex.parts, tuple)


def test_deep_nesting_is_bounded() -> None:
    body = "--N0\r\nContent-Type: text/plain\r\n\r\nx\r\n--N0--\r\n"
    for i in range(1, 60):
        body = (
            f"--N{i}\r\nContent-Type: multipart/mixed; boundary=N{i - 1}\r\n\r\n"
            f"{body}\r\n--N{i}--\r\n"
        )
    ex = extract(mail(body, top="multipart/mixed; boundary=N59"))
    assert ex.parts == ()
    assert any("nesting" in p for p in ex.problems)
