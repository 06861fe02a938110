"""gateway.mime.compose: the template-built message reads back exactly with ``email``.

compose_imip writes headers and bodies itself (no EmailMessage); these tests parse its
output with the standard library's strict ``policy.default`` parser and check that
every header, the MIME structure and every decoded body is what was asked for, for
arbitrary names, titles and calendar text, including header-injection attempts.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime.compose import (
    GATEWAY_HEADER,
    MAX_NAME,
    ComposeError,
    ComposeRequest,
    EventSummary,
    compose_imip,
    sanitise_header_text,
    subject_for,
)
from gateway.mime.extract import extract

INJECTIONS = [
    "Lunch\r\nBcc: victim@x.example",
    "Lunch\nBcc: victim@x.example\n\nbody",
    "Lunch\rX-Evil: 1",
    "=?utf-8?q?a=0D=0ABcc:_victim@x.example?=",
    '"quoted" \\ back\\slash, (comment) <angle> @ ; :',
    "bidi\u202eevil\u2028line\u2029para\x85nel\x00nul",
    "Zoë Ünïcode-Ωmega 東京 会議 🎉",
    "x" * 200,
    " ".join(["Réunion"] * 40),
]

header_text = st.one_of(st.text(max_size=160), st.sampled_from(INJECTIONS))
# Calendar property values: anything but surrogates; CR/LF included (the calendar is
# carried as is, only its line ends are normalised to CRLF).
summary_text = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=400),
    st.sampled_from(INJECTIONS),
)


def ical(summary: str, method: str = "REPLY") -> str:
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//imip-gateway//EN\r\n"
        f"METHOD:{method}\r\n"
        "BEGIN:VEVENT\r\nUID:evt-1@example.org\r\nDTSTAMP:20260201T120000Z\r\n"
        "DTSTART:20260302T100000Z\r\n"
        f"SUMMARY:{summary}\r\nORGANIZER:mailto:olga@example.org\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:ann@example.net\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def crlf(text: str) -> str:
    return re.sub(r"\r\n|\r|\n", "\r\n", text)


def lf(text: str) -> str:
    return re.sub(r"\r\n|\r|\n", "\n", text)


def request(**changes: object) -> ComposeRequest:
    base = ComposeRequest(
        from_address="ann@example.net",
        from_name="Ann Attendee",
        to=[("Olga Organiser", "olga@example.org")],
        method="REPLY",
        ical_text=ical("Budget review"),
        summary=EventSummary(title="Budget review", location="Room 4"),
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


def assert_wire_format(data: bytes) -> None:
    """7-bit, CRLF only, no line over 78 characters (RFC 5322 2.1.1, RFC 2045 2.7)."""
    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78


def squeeze(text: str) -> str:
    """Text without spaces: CPython 3.11's address parser keeps the whitespace between
    adjacent encoded words of a display name (gh-128110, fixed upstream), which
    RFC 2047 section 6.2 says to ignore; compare display names from it without spaces
    and check the exact text with :func:`rfc2047_display_name`."""
    return text.replace(" ", "")


def rfc2047_display_name(data: bytes, name: str) -> str:
    """The display name of the single mailbox in header ``name``, decoded per RFC 2047."""
    raw = parse_compat(data)[name]
    value = re.sub(r"\r\n(?=[ \t])", "", str(raw))
    phrase = value.rsplit(" <", 1)[0] if value.endswith(">") else ""
    if "=?" not in phrase:  # atoms or a quoted-string: the strict parser is exact
        return str(parse(data)[name].addresses[0].display_name)
    return str(make_header(decode_header(phrase)))


def parse_compat(data: bytes) -> Message:
    return message_from_bytes(data, policy=email_policy.compat32)


def walk_leaves(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.walk() if not p.is_multipart()]


@settings(max_examples=200, deadline=None)
@given(
    from_name=header_text,
    to_names=st.lists(header_text, min_size=1, max_size=3),
    title=header_text,
    location=header_text,
    summary=summary_text,
    kind=st.sampled_from(["accepted", "declined", "tentative", "counter", "declinecounter"]),
    attach=st.booleans(),
    with_sender=st.booleans(),
)
def test_composed_messages_parse_back_to_exactly_what_was_asked(
    from_name: str,
    to_names: list[str],
    title: str,
    location: str,
    summary: str,
    kind: str,
    attach: bool,
    with_sender: bool,
) -> None:
    calendar_text = ical(summary)
    to = [(name, f"olga{i}@example.org") for i, name in enumerate(to_names)]
    req = request(
        from_name=from_name,
        to=to,
        summary=EventSummary(title=title, location=location),
        subject_kind=kind,
        ical_text=calendar_text,
        attach_ics=attach,
        sender=("Calendar Gateway ☎", "gateway@example.net") if with_sender else None,
    )
    out = compose_imip(req)
    assert out.data == compose_imip(req).data  # deterministic: boundary from Message-ID
    assert_wire_format(out.data)
    msg = parse(out.data)

    # Headers: exactly the expected set, each without defects, values round-trip.
    expected = {
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
    } | ({"sender"} if with_sender else set())
    assert sorted(k.lower() for k in msg) == sorted(expected)
    assert msg.defects == []
    for name in expected:
        assert msg[name].defects == (), name
    assert str(msg["Subject"]) == subject_for(kind, title)  # type: ignore[arg-type]
    (sender_box,) = msg["From"].addresses
    assert sender_box.addr_spec == "ann@example.net"
    assert rfc2047_display_name(out.data, "From") == sanitise_header_text(from_name, MAX_NAME)
    assert [(squeeze(a.display_name), a.addr_spec) for a in msg["To"].addresses] == [
        (squeeze(sanitise_header_text(n, MAX_NAME)), a) for n, a in to
    ]
    if with_sender:
        assert msg["Sender"].addresses[0].display_name == "Calendar Gateway ☎"
    assert msg["Message-ID"] == "<reply-1@example.net>"
    assert msg["References"] == "<thread-0@example.org> <invite-1@example.org>"
    assert msg["Date"].datetime == datetime(2026, 2, 1, 12, 0, tzinfo=UTC)

    # Structure (RFC 6047 section 2.4) and decoded bodies.
    if attach:
        assert msg.get_content_type() == "multipart/mixed"
        alternative, attachment = msg.iter_parts()
        assert attachment.get_content_type() == "application/ics"
        assert attachment.get_filename() == "invite.ics"
        assert attachment.get_content() == crlf(calendar_text).encode("utf-8")
    else:
        alternative = msg
    assert alternative.get_content_type() == "multipart/alternative"
    plain, calendar = alternative.iter_parts()
    assert plain.get_content_type() == "text/plain"
    assert calendar.get_content_type() == "text/calendar"
    assert calendar.get_param("method") == "REPLY"
    assert lf(calendar.get_content()) == lf(calendar_text)
    body = lf(plain.get_content())
    assert body.endswith("\nshows buttons to respond.\n")
    clean_title = sanitise_header_text(title, 500)
    if clean_title:
        assert f"\nTitle: {clean_title}\n" in body
    assert {p.get_content_type() for p in walk_leaves(msg)} <= {
        "text/plain",
        "text/calendar",
        "application/ics",
    }

    # And our own reader gets the calendar back byte for byte.
    ex = extract(out.data)
    assert ex.generated_by_us
    assert [p.text for p in ex.parts] == [crlf(calendar_text)]
    assert ex.subject == subject_for(kind, title)  # type: ignore[arg-type]
    assert ex.from_addresses == ("ann@example.net",)
    assert ex.to == tuple(a for _, a in to)


def test_text_that_looks_like_an_encoded_word_is_sent_literally() -> None:
    evil = "=?utf-8?q?a=0D=0ABcc:_victim@x.example?="
    out = compose_imip(request(summary=EventSummary(title=evil), from_name=evil))
    msg = parse(out.data)
    assert str(msg["Subject"]) == f"Accepted: {evil}"
    assert rfc2047_display_name(out.data, "From") == evil
    assert msg["Bcc"] is None
    assert b"Bcc" not in out.data.split(b"\r\n\r\n", 1)[0]


def test_long_headers_are_folded_and_unfold_to_the_same_text() -> None:
    title = " ".join(f"word{i}" for i in range(25))  # 163 characters
    names = [(f"Person Number {i} With A Long Name", f"p{i}@example.org") for i in range(8)]
    out = compose_imip(request(summary=EventSummary(title=title), to=names))
    head = out.data.split(b"\r\n\r\n", 1)[0]
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert b"\r\n " in head  # folded, not truncated
    msg = parse(out.data)
    assert str(msg["Subject"]) == subject_for("accepted", title)
    assert str(msg["Subject"]).startswith("Accepted: word0 word1 ")
    assert [a.addr_spec for a in msg["To"].addresses] == [a for _, a in names]


def test_unbreakable_ascii_word_is_encoded_rather_than_overlong() -> None:
    title = "y" * 140
    out = compose_imip(request(summary=EventSummary(title=title)))
    assert_wire_format(out.data)
    assert str(parse(out.data)["Subject"]) == f"Accepted: {title}"


def test_mostly_non_latin_summary_body_is_base64_and_decodes() -> None:
    names = [f"参加者{i} 東京本社 会議室 <p{i}@example.org>" for i in range(30)]
    req = request(summary=EventSummary(title="会議", attendees=names))
    msg = parse(compose_imip(req).data)
    plain, _calendar = msg.iter_parts()
    assert plain["Content-Transfer-Encoding"] == "base64"
    assert all(f"  - {n}" in plain.get_content() for n in names)


def test_boundary_is_derived_from_message_id_and_avoids_the_body() -> None:
    first = parse(compose_imip(request()).data)
    boundary = first.get_boundary()
    assert boundary
    assert parse(compose_imip(request(message_id="<other@example.net>")).data).get_boundary() != (
        boundary
    )
    # A calendar that quotes the boundary (remote text) must not split the message.
    text = ical(f"see --{boundary} here")
    msg = parse(compose_imip(request(ical_text=text)).data)
    assert msg.get_boundary() != boundary
    _plain, calendar = msg.iter_parts()
    assert lf(calendar.get_content()) == lf(text)


def test_non_ascii_domain_is_sent_as_its_a_label() -> None:
    msg = parse(compose_imip(request(to=[("", "olga@bücher.example")])).data)
    assert msg["To"].addresses[0].addr_spec == "olga@xn--bcher-kva.example"


@pytest.mark.parametrize(
    "address",
    ["zoë@example.org", "a@b@c", "<a@b>", "a@b.", "a..b@c", "a@", "plain", "a b@c"],
)
def test_addresses_the_wire_cannot_carry_are_refused_with_compose_error(address: str) -> None:
    with pytest.raises(ComposeError, match="invalid mail address"):
        compose_imip(request(to=[("Olga", address)]))


def test_calendar_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ComposeError, match="not valid Unicode"):
        compose_imip(request(ical_text=ical("bad \ud800 text")))


def test_unicode_line_separators_in_a_calendar_are_content_not_line_ends() -> None:
    text = ical("a\u2028b\x1cc\x85d")
    ex = extract(compose_imip(request(ical_text=text)).data)
    assert [p.text for p in ex.parts] == [text]
