"""Pure helpers of the IMAP intake: mailbox name encoding, Return-Path, backoff."""

from __future__ import annotations

import random

import pytest

from gateway.transports.imap import ImapAccountOptions, backoff_delay, return_path
from gateway.transports.imap_client import ImapCommandError, encode_mailbox


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("INBOX", '"INBOX"'),
        ("Processed iMIP", '"Processed iMIP"'),
        # RFC 3501 section 5.1.3's own example.
        ("~peter/mail/台北/日本語", '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'),
        ("Traité", '"Trait&AOk-"'),
        ("R&D", '"R&-D"'),
        ('say "hi"\\', '"say \\"hi\\"\\\\"'),
    ],
)
def test_mailbox_names_are_quoted_modified_utf7(name: str, wire: str) -> None:
    assert encode_mailbox(name) == wire


@pytest.mark.parametrize(
    ("raw", "sender"),
    [
        (b"Return-Path: <Bob@Example.NET>\r\nSubject: x\r\n\r\nbody", "bob@example.net"),
        (b"Subject: x\r\nreturn-path:\r\n <a@b.example>\r\n\r\n", "a@b.example"),
        (b"Return-Path: <>\r\nSubject: bounce\r\n\r\n", ""),
        (b"Subject: no envelope\r\n\r\nReturn-Path: <in@body.example>\r\n", ""),
        (b"Subject: x\n\nbody", ""),
    ],
)
def test_return_path_is_the_envelope_sender_from_the_header_block(raw: bytes, sender: str) -> None:
    assert return_path(raw) == sender


def test_backoff_grows_exponentially_within_jitter_and_is_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 30.0), (500, 30.0)]:
        for _ in range(50):
            delay = backoff_delay(attempt, 1.0, 30.0, rng)
            assert ceiling / 2 <= delay <= ceiling


def test_command_error_exposes_the_response_code() -> None:
    error = ImapCommandError("UID MOVE", "NO", "[TRYCREATE] Mailbox doesn't exist: X")
    assert error.code == "TRYCREATE"
    assert ImapCommandError("UID MOVE", "NO", "plain text").code is None


@pytest.mark.parametrize(
    "bad",
    [
        {"tls": "ssl"},
        {"liveness_interval_seconds": 0},
        {"reconnect_max_seconds": -1.0},
        {"max_message_attempts": 0},
    ],
)
def test_account_options_reject_unusable_values(bad: dict[str, object]) -> None:
    base: dict[str, object] = {
        "name": "a",
        "host": "imap.example.org",
        "port": 993,
        "username": "a",
        "password": "p",
        "recipient": "a@example.org",
    }
    with pytest.raises(ValueError, match="imap account 'a'"):
        ImapAccountOptions(**{**base, **bad})  # type: ignore[arg-type]


def test_account_options_never_show_the_password() -> None:
    options = ImapAccountOptions(
        name="a",
        host="imap.example.org",
        port=993,
        username="a",
        password="hunter2-secret",
        recipient="a@example.org",
    )
    assert "hunter2-secret" not in repr(options)
