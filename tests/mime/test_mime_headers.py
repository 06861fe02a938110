"""gateway.mime.headers: address lists are parsed before encoded words are decoded."""

from __future__ import annotations

import pytest

from gateway.mime import headers as hdr
from gateway.mime.extract import extract
from gateway.mime.identity import sender_identity


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?boss=40bank.example?= <mallory@evil.example>",
        "=?utf-8?b?Ym9zc0BiYW5rLmV4YW1wbGU=?= <mallory@evil.example>",
        '"=?utf-8?q?boss=40bank.example?=" <mallory@evil.example>',
        "mallory@evil.example (=?utf-8?q?boss=40bank.example?=)",
    ],
)
def test_encoded_display_name_is_never_read_as_an_address(value: str) -> None:
    # RFC 2047 section 5: an encoded word stands for a phrase word, never an addr-spec.
    assert hdr.addresses([value]) == ("mallory@evil.example",)


def test_spoofed_encoded_from_does_not_reach_the_sender_identity() -> None:
    raw = (
        b"From: =?utf-8?q?olga=40example.org?= <mallory@evil.example>\r\n"
        b"To: bob@example.net\r\nSubject: hi\r\nMessage-ID: <m@evil.example>\r\n\r\nhi\r\n"
    )
    ex = extract(raw)
    assert ex.from_addresses == ("mallory@evil.example",)
    ident = sender_identity(
        ex, envelope_from="mallory@evil.example", trusted_authserv_ids=(), attendee_relays=()
    )
    assert ident.from_addresses == ("mallory@evil.example",)


def test_encoded_and_folded_address_lists_keep_every_address_in_order() -> None:
    values = [
        '=?utf-8?b?w4lsb2TDqWU=?= <elodie@example.org>,\r\n "Doe, John" <john@example.org>',
        "Zoë <zoe@example.org>, plain@example.org",
    ]
    assert hdr.addresses(values) == (
        "elodie@example.org",
        "john@example.org",
        "zoe@example.org",
        "plain@example.org",
    )


def test_unfold_value_keeps_encoded_words_and_blanks_controls() -> None:
    assert hdr.unfold_value("=?utf-8?q?a?=\r\n b\x00c") == "=?utf-8?q?a?= b c"
    # decode_value, for display text, still decodes.
    assert hdr.decode_value("=?utf-8?q?caf=C3=A9?=") == "café"
