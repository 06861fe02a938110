"""gateway.mime.extract fast paths give exactly what the slow paths gave.

Two shortcuts exist for speed (issue 5): a well-formed CRLF message is split into its
compat32 Message tree without the line-by-line feedparser, and a second calendar part
whose decoded bytes equal an earlier one (Google's ``invite.ics``) is not decoded and
split again.  Each is checked here against the plain path on the same input.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime.compose import ComposeRequest, EventSummary, compose_imip
from gateway.mime.extract import Extraction, _fast_parse, extract

# The module itself (``gateway.mime.extract`` as an attribute is the re-exported function).
EXTRACT: ModuleType = sys.modules["gateway.mime.extract"]
CORPUS = Path(__file__).resolve().parent.parent / "data" / "corpus"
CORPUS_MAILS = sorted(CORPUS.rglob("*.eml"))

CAL = (
    "BEGIN:VCALENDAR\r\nPRODID:-//Google Inc//Google Calendar 70.9054//EN\r\nVERSION:2.0\r\n"
    "METHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:g1@example.org\r\nSEQUENCE:0\r\n"
    "DTSTAMP:20260101T100000Z\r\nDTSTART:20260105T100000Z\r\nSUMMARY:{summary}\r\n"
    "ORGANIZER:mailto:org@example.org\r\n"
    "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:att@example.net\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
)


def google_mail(
    summary: str = "Review",
    *,
    ics_text: str | None = None,
    ics_charset: str = "",
    cal_charset: str = "UTF-8",
    tail: str = "\r\n",
) -> bytes:
    """Gmail's shape: mixed(alternative(plain, html, text/calendar), invite.ics base64)."""
    cal = CAL.format(summary=summary)
    ics = cal if ics_text is None else ics_text
    b64 = base64.encodebytes(ics.encode("utf-8")).decode().replace("\n", "\r\n")
    ics_ct = "application/ics; name=invite.ics" + (
        f"; charset={ics_charset}" if ics_charset else ""
    )
    text = (
        "From: Org <org@example.org>\r\nTo: att@example.net\r\n"
        "Subject: Invitation: Review\r\n\tfolded tail\r\nMessage-ID: <g1@example.org>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="000outer"\r\n\r\n'
        '--000outer\r\nContent-Type: multipart/alternative; boundary="000inner"\r\n\r\n'
        '--000inner\r\nContent-Type: text/plain; charset="UTF-8"\r\n\r\nYou are invited.\r\n'
        '--000inner\r\nContent-Type: text/html; charset="UTF-8"\r\n\r\n'
        "<div><p>You are invited.</p></div>\r\n"
        f'--000inner\r\nContent-Type: text/calendar; charset="{cal_charset}"; method=REQUEST\r\n'
        f"Content-Transfer-Encoding: 7bit\r\n\r\n{cal}\r\n--000inner--\r\n\r\n"
        f"--000outer\r\nContent-Type: {ics_ct}\r\n"
        'Content-Disposition: attachment; filename="invite.ics"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{b64}\r\n--000outer--{tail}"
    )
    return text.encode("utf-8", "surrogateescape")


def composed(attach: bool) -> bytes:
    from datetime import UTC, datetime

    req = ComposeRequest(
        from_address="ann@example.net",
        from_name="Zoë Attendee",
        to=[("Olga", "olga@example.org")],
        method="REQUEST",
        ical_text=CAL.format(summary="Réunion"),
        summary=EventSummary(title="Réunion"),
        subject_kind="invitation",
        date=datetime(2026, 2, 1, 12, 0, tzinfo=UTC),
        message_id="<c1@example.net>",
        attach_ics=attach,
    )
    return compose_imip(req).data


@contextmanager
def slow_paths() -> Iterator[None]:
    """extract() with both shortcuts switched off: the reference behaviour."""
    names = vars(EXTRACT)
    saved = {k: names[k] for k in ("_fast_parse", "_ASCII_COMPATIBLE")}
    names["_fast_parse"] = lambda raw: None
    names["_ASCII_COMPATIBLE"] = frozenset()
    try:
        yield
    finally:
        names.update(saved)


def reference(raw: bytes) -> Extraction:
    with slow_paths():
        return extract(raw)


def tree(msg: Message | str) -> object:
    if isinstance(msg, str):
        return msg
    payload = msg.get_payload()
    return (
        list(msg.raw_items()),
        [type(d).__name__ for d in msg.defects],
        msg.get_content_type(),
        [tree(p) for p in payload] if isinstance(payload, list) else payload,
    )


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


WELL_FORMED = [
    pytest.param(google_mail(), id="google"),
    pytest.param(google_mail("Réunion über"), id="google-utf8"),
    pytest.param(composed(False), id="composed"),
    pytest.param(composed(True), id="composed-attach"),
    *(pytest.param(crlf(p.read_bytes()), id=p.name) for p in CORPUS_MAILS),
]


@pytest.mark.parametrize("raw", WELL_FORMED)
def test_fast_parse_builds_the_same_tree_as_the_feedparser(raw: bytes) -> None:
    fast = _fast_parse(raw)
    full = message_from_bytes(raw, policy=compat32)
    if fast is None:
        assert (
            full.defects
            or any(p.defects for p in full.walk())
            or (full.get_content_type() == "multipart/report")
        )
        return
    assert tree(fast) == tree(full)


def test_fast_parse_is_taken_for_the_usual_shapes() -> None:
    for raw in (google_mail(), composed(False), composed(True)):
        assert _fast_parse(raw) is not None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(google_mail().replace(b"\r\n", b"\n"), id="bare-lf"),
        pytest.param(google_mail().replace(b"--000outer--", b""), id="no-close-delimiter"),
        pytest.param(google_mail().replace(b'boundary="000inner"', b'boundary="x"'), id="bad"),
        pytest.param(b"no separator", id="headers-only"),
        pytest.param(b"From nobody\r\nSubject: x\r\n\r\nbody", id="unix-from"),
        pytest.param(b" continued\r\nSubject: x\r\n\r\nbody", id="first-line-continuation"),
        pytest.param(b"Subject: x\r\nnot a header\r\n\r\nbody", id="no-colon"),
    ],
)
def test_malformed_mail_falls_back_to_the_feedparser(raw: bytes) -> None:
    assert _fast_parse(raw) is None
    assert extract(raw) == reference(raw)


@pytest.mark.parametrize("raw", WELL_FORMED)
def test_extract_with_shortcuts_equals_extract_without(raw: bytes) -> None:
    assert extract(raw) == reference(raw)


def test_google_invite_ics_copy_is_dropped_without_a_second_decode() -> None:
    ex = extract(google_mail("Réunion"))
    assert len(ex.parts) == 1
    assert ex.parts[0].source == "text/calendar"
    assert ex.parts[0].text == CAL.format(summary="Réunion")
    assert [w for w in ex.warnings if "identical copy" in w] == [
        "1.2: identical copy of calendar part 0 dropped"
    ]
    assert ex == reference(google_mail("Réunion"))


def test_same_bytes_in_another_charset_are_decoded_on_their_own() -> None:
    # Same bytes, but declared latin-1: a different text, so no shortcut; the
    # signature rule (same UID/METHOD/SEQUENCE) is what drops it, as before.
    raw = google_mail("Réunion", ics_charset="iso-8859-1")
    ex = extract(raw)
    assert ex == reference(raw)
    assert len(ex.parts) == 1
    assert any("same UID/METHOD/SEQUENCE" in w for w in ex.warnings)


def test_a_different_invite_ics_is_still_returned() -> None:
    other = CAL.format(summary="Other").replace("UID:g1@", "UID:g2@")
    raw = google_mail(ics_text=other)
    ex = extract(raw)
    assert [p.text for p in ex.parts] == [CAL.format(summary="Review"), other]
    assert ex == reference(raw)


@settings(max_examples=120, deadline=None)
@given(
    summary=st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
    ics_trailer=st.sampled_from(["", "\r\n", "  \r\n\r\n", "\n", "X-JUNK\r\n"]),
    ics_charset=st.sampled_from(["", "utf-8", "UTF-8", "iso-8859-1", "utf-16", "bogus"]),
    cal_charset=st.sampled_from(["UTF-8", "us-ascii", "windows-1252"]),
    tail=st.sampled_from(["", "\r\n", "\r\nepilogue\r\n", "\n", "\r\n--000outer\r\n"]),
)
def test_shortcuts_never_change_the_extraction(
    summary: str, ics_trailer: str, ics_charset: str, cal_charset: str, tail: str
) -> None:
    raw = google_mail(
        summary,
        ics_text=CAL.format(summary=summary) + ics_trailer,
        ics_charset=ics_charset,
        cal_charset=cal_charset,
        tail=tail,
    )
    assert extract(raw) == reference(raw)


def test_indexed_header_lookups_follow_every_change_to_the_headers() -> None:
    # The fast path's Message answers get() from an index (issue 5); it must answer
    # exactly as compat32's scan does, also after each way of changing the headers.
    raw = google_mail()
    fast = _fast_parse(raw)
    assert fast is not None
    assert type(fast) is not Message
    plain = message_from_bytes(raw, policy=compat32)
    names = {k.lower() for k in plain} | {"x-new", "x-missing", "CONTENT-TYPE"}

    def same() -> None:
        for name in names:
            assert str(fast.get(name, "-")) == str(plain.get(name, "-")), name
        assert fast.get_content_type() == plain.get_content_type()
        assert fast.get_boundary() == plain.get_boundary()

    same()
    changes = [
        lambda m: m.__setitem__("X-New", "one"),
        lambda m: m.set_raw("X-New", "two"),  # a second one: the first still wins
        lambda m: m.replace_header("X-New", "three"),
        lambda m: m.__delitem__("Subject"),
        lambda m: m.add_header("X-New", "four", p="q"),
        lambda m: m.set_param("charset", "latin-1"),
        lambda m: m.set_boundary("zzz"),
        lambda m: m.__delitem__("X-New"),
    ]
    for change in changes:
        change(fast)
        change(plain)
        same()
