"""gateway.mime.compose: RFC 6047 structure, RFC 3834 marking, no header injection."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime.compose import (
    GATEWAY_HEADER,
    ComposeError,
    ComposeRequest,
    EventSummary,
    compose_imip,
    sanitise_header_text,
)
from gateway.mime.extract import extract

PARIS = ZoneInfo("Europe/Paris")


def ical(method: str = "REQUEST", summary: str = "Budget review") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imip-gateway//EN\r\n"
        f"METHOD:{method}\r\n"
        "BEGIN:VTIMEZONE\r\nTZID:Europe/Paris\r\nBEGIN:STANDARD\r\nDTSTART:19701025T030000\r\n"
        "TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\nEND:VTIMEZONE\r\n"
        "BEGIN:VEVENT\r\nUID:evt-1@example.org\r\nDTSTAMP:20260201T120000Z\r\n"
        "DTSTART;TZID=Europe/Paris:20260302T100000\r\n"
        f"SUMMARY:{summary}\r\nORGANIZER:mailto:olga@example.org\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ann@example.net\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def request(**changes: object) -> ComposeRequest:
    base = ComposeRequest(
        from_address="ann@example.net",
        from_name="Ann Attendee",
        to=[("Olga Organiser", "olga@example.org")],
        method="REPLY",
        ical_text=ical("REPLY"),
        summary=EventSummary(
            title="Budget review",
            start=datetime(2026, 3, 2, 10, 0, tzinfo=PARIS),
            end=datetime(2026, 3, 2, 11, 30, tzinfo=PARIS),
            timezone_name="Europe/Paris",
            location="Room 4",
            organizer="Olga Organiser <olga@example.org>",
            attendees=["Ann Attendee <ann@example.net>"],
            partstat="ACCEPTED",
        ),
        subject_kind="accepted",
        date=datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
        message_id="<reply-1@example.net>",
        in_reply_to="<invite-1@example.org>",
        references=["<thread-0@example.org>"],
        auto_submitted="auto-replied",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = message_from_bytes(data, policy=email_policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_reply_round_trip_structure_and_headers() -> None:
    out = compose_imip(request())
    assert out.message_id == "<reply-1@example.net>"
    assert b"\r\n" in out.data
    assert b"\n" not in out.data.replace(b"\r\n", b"")
    assert out.data.isascii()  # 7-bit clean: safe for any relay
    msg = parse(out.data)
    assert msg.get_content_type() == "multipart/alternative"
    plain, calendar = list(msg.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert calendar.get_content_type() == "text/calendar"
    assert calendar.get_param("method") == "REPLY"
    assert str(calendar.get_param("charset")).lower() == "utf-8"
    assert calendar.get_content().replace("\r\n", "\n") == ical("REPLY").replace("\r\n", "\n")
    assert msg["Subject"] == "Accepted: Budget review"
    assert msg["From"].addresses[0].addr_spec == "ann@example.net"
    assert msg["From"].addresses[0].display_name == "Ann Attendee"
    assert msg["To"].addresses[0].addr_spec == "olga@example.org"
    assert msg["Message-ID"] == "<reply-1@example.net>"
    assert msg["In-Reply-To"] == "<invite-1@example.org>"
    assert msg["References"] == "<thread-0@example.org> <invite-1@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Date"].datetime == datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
    assert msg[GATEWAY_HEADER] == "1"
    assert msg["Sender"] is None


def test_plain_text_summary_says_what_when_where_who_and_changes() -> None:
    out = compose_imip(
        request(
            summary=EventSummary(
                title="Budget review",
                start=datetime(2026, 3, 2, 10, 0, tzinfo=PARIS),
                end=datetime(2026, 3, 2, 11, 30, tzinfo=PARIS),
                timezone_name="Europe/Paris",
                location="Room 4",
                organizer="Olga <olga@example.org>",
                attendees=["Ann <ann@example.net>", "Bob <bob@example.net>"],
                changes=["Start moved from 09:00 to 10:00"],
                recurrence_note="Every Monday",
            ),
            subject_kind="updated",
            method="REQUEST",
            ical_text=ical("REQUEST"),
        )
    )
    text = parse(out.data).get_body(preferencelist=("plain",))
    assert text is not None
    body = text.get_content()
    assert "Title: Budget review" in body
    assert "When: Mon 2 Mar 2026 10:00–11:30 (Europe/Paris)" in body
    assert "Where: Room 4" in body
    assert "Organiser: Olga <olga@example.org>" in body
    assert "  - Bob <bob@example.net>" in body
    assert "  - Start moved from 09:00 to 10:00" in body
    assert "Repeats: Every Monday" in body


def test_all_day_event_summary_uses_exclusive_end() -> None:
    summary = EventSummary(title="Offsite", start=date(2026, 5, 4), end=date(2026, 5, 6))
    out = compose_imip(request(summary=summary))
    body = parse(out.data).get_body(preferencelist=("plain",))
    assert body is not None
    assert "When: Mon 4 May 2026 – Tue 5 May 2026 (all day)" in body.get_content()


def test_ascii_calendar_is_7bit_and_non_ascii_is_quoted_printable() -> None:
    ascii_msg = parse(compose_imip(request()).data)
    assert ascii_msg.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"
    utf = request(
        ical_text=ical("REPLY", "Réunion über Straße"), summary=EventSummary(title="Réunion")
    )
    msg = parse(compose_imip(utf).data)
    cal = msg.get_payload()[1]
    assert cal["Content-Transfer-Encoding"] == "quoted-printable"
    assert "SUMMARY:Réunion über Straße" in cal.get_content()
    assert msg["Subject"] == "Accepted: Réunion"
    assert b"=?utf-8?" in compose_imip(utf).data  # RFC 2047 on the wire


def test_long_lines_are_not_sent_as_7bit() -> None:
    long_ical = ical("REPLY", "x" * 120)
    msg = parse(compose_imip(request(ical_text=long_ical)).data)
    assert msg.get_payload()[1]["Content-Transfer-Encoding"] == "quoted-printable"
    assert all(
        len(line) <= 78 for line in compose_imip(request(ical_text=long_ical)).data.split(b"\r\n")
    )


def test_header_injection_through_summary_is_neutralised() -> None:
    evil = "Lunch\r\nBcc: victim@x.example\r\n\r\nowned"
    out = compose_imip(request(summary=EventSummary(title=evil), ical_text=ical("REPLY")))
    msg = parse(out.data)
    assert msg["Bcc"] is None
    assert msg["Subject"] == "Accepted: Lunch Bcc: victim@x.example owned"
    header_block = out.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in header_block


def test_header_injection_through_display_names_is_neutralised() -> None:
    req = request(
        from_name="Ann\r\nBcc: victim@x.example",
        to=[("Olga\nX-Evil: 1", "olga@example.org")],
    )
    msg = parse(compose_imip(req).data)
    assert msg["Bcc"] is None
    assert msg["X-Evil"] is None
    assert msg["From"].addresses[0].display_name == "Ann Bcc: victim@x.example"


def test_injection_in_an_address_is_refused() -> None:
    with pytest.raises(ComposeError):
        compose_imip(request(to=[("", "olga@example.org\r\nBcc: victim@x.example")]))
    with pytest.raises(ComposeError):
        compose_imip(request(in_reply_to="<a@b>\r\nBcc: v@x"))


def test_sender_header_when_acting_for_a_user() -> None:
    msg = parse(compose_imip(request(sender=("Calendar Gateway", "gateway@example.net"))).data)
    assert msg["Sender"].addresses[0].addr_spec == "gateway@example.net"


def test_attachment_is_off_by_default_and_optional() -> None:
    msg = parse(compose_imip(request(attach_ics=True)).data)
    assert msg.get_content_type() == "multipart/mixed"
    alternative, attachment = list(msg.iter_parts())
    assert alternative.get_content_type() == "multipart/alternative"
    assert attachment.get_content_type() == "application/ics"
    assert attachment.get_filename() == "invite.ics"
    assert attachment.get_content() == ical("REPLY").encode()


def test_method_must_match_calendar_method() -> None:
    with pytest.raises(ComposeError, match="differs"):
        compose_imip(request(method="REQUEST"))
    with pytest.raises(ComposeError, match="unknown iTIP method"):
        compose_imip(request(method="INVITE"))


def test_message_id_is_generated_from_domain_when_not_injected() -> None:
    out = compose_imip(request(message_id=None, message_id_domain="example.net"))
    assert out.message_id.endswith("@example.net>")
    assert parse(out.data)["Message-ID"] == out.message_id
    with pytest.raises(ComposeError):
        compose_imip(request(message_id=None, message_id_domain=None))


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        ("invitation", "Invitation"),
        ("updated", "Updated"),
        ("cancelled", "Cancelled"),
        ("declined", "Declined"),
        ("tentative", "Tentative"),
        ("delegated", "Delegated"),
        ("counter", "Counter proposal"),
        ("declinecounter", "Declined counter proposal"),
        ("refresh", "Refresh"),
        ("freebusy", "Free/busy"),
    ],
)
def test_subject_prefixes(kind: str, prefix: str) -> None:
    msg = parse(compose_imip(request(subject_kind=kind)).data)
    assert msg["Subject"] == f"{prefix}: Budget review"


def test_our_own_message_is_recognised_by_extract_as_generated_by_us() -> None:
    ex = extract(compose_imip(request(attach_ics=True)).data)
    assert ex.generated_by_us
    assert ex.auto_submitted == "auto-replied"
    assert len(ex.parts) == 1  # the attachment is an identical copy
    (part,) = ex.parts
    assert part.method == part.mime_method == "REPLY"
    assert part.text == ical("REPLY")
    assert ex.in_reply_to == ("<invite-1@example.org>",)


def test_sanitise_header_text_limits_and_strips_controls() -> None:
    assert sanitise_header_text("a\x00b\u2028c\u202ed\te") == "a b c d e"
    long = sanitise_header_text("x" * 500, 20)
    assert len(long) == 20
    assert long.endswith("…")


EXPECTED_HEADERS = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "auto-submitted",
    "x-auto-response-suppress",
    GATEWAY_HEADER.lower(),
    "mime-version",
    "content-type",
}


@settings(max_examples=150, deadline=None)
@given(title=st.text(max_size=300), name=st.text(max_size=80))
def test_no_calendar_text_can_add_or_break_headers(title: str, name: str) -> None:
    summary_line = title.replace("\r", " ").replace("\n", " ").replace("\\", "")
    req = request(
        summary=EventSummary(title=title, location=title),
        from_name=name,
        ical_text=ical(
            "REPLY", summary_line.encode("utf-8", "replace").decode("utf-8")[:60] or "x"
        ),
    )
    out = compose_imip(req)
    assert out.data.isascii()
    msg = parse(out.data)
    assert {k.lower() for k, _ in msg.items()} == EXPECTED_HEADERS
    assert msg.defects == []
    assert "\n" not in str(msg["Subject"])
    assert str(msg["Subject"]).startswith("Accepted: ")


@settings(max_examples=100, deadline=None)
@given(summary=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=200))
def test_extract_reads_back_exactly_the_calendar_compose_wrote(summary: str) -> None:
    text = ical("REPLY", summary)
    ex = extract(compose_imip(request(ical_text=text)).data)
    assert len(ex.parts) == 1
    assert ex.parts[0].text == text
    assert ex.parts[0].method == "REPLY"
