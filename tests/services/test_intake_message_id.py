"""The Message-ID used for duplicate detection: the fast header scan agrees with the parser.

``message_id_of`` decides which deliveries the journal treats as retries, so a faster
implementation must give exactly the answers the standard library's header parser gave.
"""

from __future__ import annotations

from email.parser import BytesHeaderParser
from email.policy import compat32

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mime.headers import message_ids
from gateway.services.intake import message_id_of


def reference_message_id(raw: bytes) -> str | None:
    """The implementation before the fast path: parse the header block, take the first id."""
    value = BytesHeaderParser(policy=compat32).parsebytes(raw).get("Message-ID")
    if value is None:
        return None
    ids = message_ids(str(value))
    if not ids or len(ids[0]) > 998:
        return None
    return ids[0]


def test_message_id_of_a_plain_message() -> None:
    raw = b"From: a@x\r\nMessage-ID: <m1@x>\r\nSubject: s\r\n\r\nbody\r\n"
    assert message_id_of(raw) == "<m1@x>"


def test_first_message_id_field_wins_and_name_is_case_insensitive() -> None:
    raw = b"message-id: <one@x>\r\nMessage-ID: <two@x>\r\n\r\n"
    assert message_id_of(raw) == "<one@x>"


def test_folded_message_id_is_read_with_its_continuation_line() -> None:
    raw = b"Message-ID:\r\n <folded@x>\r\nSubject: s\r\n\r\n"
    assert message_id_of(raw) == "<folded@x>"


def test_message_id_in_the_body_is_not_a_header() -> None:
    assert message_id_of(b"Subject: s\r\n\r\nMessage-ID: <body@x>\r\n") is None


def test_header_block_ends_at_a_line_that_is_not_a_header() -> None:
    # No blank separator: the email package starts the body at the first non-header line.
    assert message_id_of(b"Subject: s\r\nnot a header\r\nMessage-ID: <late@x>\r\n") is None


def test_space_before_the_colon_is_another_field_name() -> None:
    assert message_id_of(b"Message-ID : <spaced@x>\r\n\r\n") is None


def test_unix_from_line_and_bare_cr_line_ends_are_handled_like_the_parser() -> None:
    raw = b"From a@x Sat Jan  1 00:00:00 2000\rMessage-ID: <cr@x>\r\r"
    assert message_id_of(raw) == reference_message_id(raw) == "<cr@x>"


def test_non_ascii_header_block_falls_back_to_the_parser() -> None:
    raw = "Subject: caf\u00e9\r\nMessage-ID: <utf8@x>\r\n\r\n".encode()
    assert message_id_of(raw) == reference_message_id(raw) == "<utf8@x>"
    raw = "Message-ID: <caf\u00e9@x>\r\n\r\n".encode()
    assert message_id_of(raw) == reference_message_id(raw)


def test_overlong_message_id_is_not_trusted() -> None:
    raw = b"Message-ID: <" + b"a" * 1000 + b"@x>\r\n\r\n"
    assert message_id_of(raw) is None


# Header-ish building blocks, chosen to hit every branch of the parser's header loop:
# continuation lines, From_ lines, empty field names, odd names, folding, bare CR/LF.
_PIECES = st.sampled_from(
    [
        b"Message-ID: <a@x>",
        b"Message-Id:<b@y>",
        b"MESSAGE-ID:   <c@z> <d@z>",
        b"Message-ID:",
        b"Message-ID: no angle brackets",
        b"Message-ID : <spaced@x>",
        b" <cont@x>",
        b"\t<tab@x>",
        b"  ",
        b"From someone@x Mon Jan  1 00:00:00 2024",
        b"From: a@x",
        b": <nameless@x>",
        b"Subject: hello",
        b"X-Weird!#$: <weird@x>",
        b"not a header line",
        b"",
        b"<bare@x>",
        "Subject: caf\u00e9".encode(),
        b"Message-ID: <\xff@x>",
    ]
)
_EOL = st.sampled_from([b"\r\n", b"\n", b"\r"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_PIECES, _EOL), max_size=12), st.binary(max_size=20))
def test_fast_scan_agrees_with_the_email_parser(
    lines: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    raw = b"".join(text + eol for text, eol in lines) + tail
    assert message_id_of(raw) == reference_message_id(raw)
