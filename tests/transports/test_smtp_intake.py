"""The SMTP listener over real sockets, in front of a real (migrated SQLite) journal.

What is proven here: 250 only after the journal commit (RFC 5321 section 4.2.5), no open
relay (550 5.1.1), the size limit (SIZE, 552 5.3.4), 451 for a broken database and for
handler errors (never aiosmtpd's 500 with the exception text), duplicate deliveries,
bounces with the null sender, STARTTLS + AUTH, relay mode, and a clean shutdown (421).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.services.intake import JournalIntake, MessageTooLarge, message_id_of
from gateway.services.ports import Accepted, Envelope, Intake
from gateway.store import Store
from gateway.store import journal as journal_repo
from gateway.store.models import JournalRow
from gateway.transports.smtp import ListenerOptions, SmtpListener
from tests.support.smtp_sink import (
    RunningInBackground,
    SmtpDialog,
    openssl_available,
    self_signed_cert,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LOCAL = {"alice@example.org", "bob@example.org", "calendar@example.org"}


def is_local(addr: str) -> bool:
    return addr in LOCAL


def message(message_id: str = "<m1@example.net>", body: str = "hello") -> bytes:
    return (
        "From: Carol <carol@example.net>\r\n"
        "To: alice@example.org\r\n"
        "Subject: Invitation\r\n"
        f"Message-ID: {message_id}\r\n"
        "\r\n"
        f"{body}\r\n"
    ).encode()


def get_row(store: Store, journal_id: int) -> JournalRow | None:
    return store.read_sync(lambda s: s.get(JournalRow, journal_id))


def journal_count(store: Store) -> int:
    return len(store.read_sync(journal_repo.list_messages, 1000))


class Listener:
    """A running listener plus what the intake reported."""

    def __init__(self, listener: SmtpListener, woken: list[int]) -> None:
        self.listener = listener
        self.woken = woken

    @property
    def port(self) -> int:
        return self.listener.port

    def client(self, *, timeout: float = 10) -> smtplib.SMTP:
        return smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)

    async def send(
        self, raw: bytes, rcpts: list[str], mail_from: str = "carol@example.net"
    ) -> tuple[int, bytes]:
        """smtplib in a thread; returns the final (code, text) of DATA."""

        def deliver() -> tuple[int, bytes]:
            with self.client() as smtp:
                smtp.ehlo("client.example.net")
                smtp.mail(mail_from)
                for rcpt in rcpts:
                    smtp.rcpt(rcpt)
                return smtp.data(raw)

        return await asyncio.to_thread(deliver)


StartListener = Callable[..., AbstractAsyncContextManager[Listener]]


@pytest.fixture
def start_listener(store: Store) -> StartListener:
    """``async with start_listener(options=..., intake=...) as listener``."""

    @asynccontextmanager
    async def start(
        options: ListenerOptions | None = None,
        intake: Intake | None = None,
        local: Callable[[str], bool] = is_local,
    ) -> AsyncIterator[Listener]:
        woken: list[int] = []
        opts = options or ListenerOptions(port=0, max_message_bytes=64 * 1024)
        real_intake = intake or JournalIntake(
            store, lambda: NOW, woken.append, max_message_bytes=opts.max_message_bytes
        )
        listener = SmtpListener(opts, real_intake, local, protocol="smtp")
        async with RunningInBackground(listener, listener.ready):
            yield Listener(listener, woken)

    return start


async def test_250_comes_after_the_journal_commit_and_the_row_holds_bytes_and_envelope(
    start_listener: StartListener, store: Store
) -> None:
    raw = message()
    async with start_listener() as srv:
        code, reply = await srv.send(raw, ["Alice@Example.org", "bob@example.org"])
        assert code == 250
        assert reply.startswith(b"2.0.0 Ok: queued as ")
        journal_id = int(reply.rsplit(b" ", 1)[1])
        row = get_row(store, journal_id)
        assert row is not None
        assert row.raw == raw
        assert row.source == "smtp"
        assert row.envelope_from == "carol@example.net"
        assert row.envelope_to == ["alice@example.org", "bob@example.org"]
        assert row.message_id == "<m1@example.net>"
        assert row.status == "pending"
        assert srv.woken == [journal_id]


class GatedIntake:
    """Delegates to the real intake only when the test opens the gate."""

    def __init__(self, inner: Intake) -> None:
        self.inner = inner
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.accept(raw, envelope)


async def test_client_gets_no_reply_while_the_journal_write_is_pending(
    start_listener: StartListener, store: Store
) -> None:
    gated = GatedIntake(JournalIntake(store, lambda: NOW))
    async with start_listener(intake=gated) as srv:
        sending = asyncio.ensure_future(srv.send(message(), ["alice@example.org"]))
        await asyncio.wait_for(gated.entered.wait(), 10)
        # The whole message has arrived and intake is blocked: no reply may exist yet.
        assert not sending.done()
        assert journal_count(store) == 0
        gated.gate.set()
        code, _ = await asyncio.wait_for(sending, 10)
        assert code == 250
        assert journal_count(store) == 1


async def test_non_local_recipient_is_refused_550_511_and_nothing_is_journaled(
    start_listener: StartListener, store: Store
) -> None:
    async with start_listener() as srv:

        def talk() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with srv.client() as smtp:
                smtp.ehlo("client.example.net")
                smtp.mail("carol@example.net")
                remote = smtp.rcpt("mallory@elsewhere.test")
                local = smtp.rcpt("alice@example.org")
                return remote, local

        remote, local = await asyncio.to_thread(talk)
    assert remote == (550, b"5.1.1 <mallory@elsewhere.test>: recipient not local")
    assert local[0] == 250
    assert journal_count(store) == 0


async def test_size_is_advertised_and_oversize_mail_is_refused_552_534(
    start_listener: StartListener, store: Store
) -> None:
    options = ListenerOptions(port=0, max_message_bytes=4096)
    async with start_listener(options=options) as srv:
        dialog = await SmtpDialog.open("127.0.0.1", srv.port)
        ehlo = await dialog.command("EHLO client.example.net")
        assert "250-SIZE 4096" in ehlo
        # Declared too big at MAIL (RFC 1870).
        assert await dialog.command("MAIL FROM:<carol@example.net> SIZE=5000") == [
            "552 5.3.4 Message too big"
        ]
        # Undeclared, and too big while the data arrives.
        assert (await dialog.command("MAIL FROM:<carol@example.net>"))[0].startswith("250")
        assert (await dialog.command("RCPT TO:<alice@example.org>"))[0].startswith("250")
        assert (await dialog.command("DATA"))[0].startswith("354")
        assert await dialog.send_data(
            message(body="x" * 70 + "\r\n" + ("y" * 70 + "\r\n") * 70)
        ) == ["552 5.3.4 Message too big"]
        # The session stays usable for a message that fits.
        assert (await dialog.command("MAIL FROM:<carol@example.net>"))[0].startswith("250")
        assert (await dialog.command("RCPT TO:<alice@example.org>"))[0].startswith("250")
        assert (await dialog.command("DATA"))[0].startswith("354")
        assert (await dialog.send_data(message()))[0].startswith("250 2.0.0 Ok: queued as")
        await dialog.close()
    assert journal_count(store) == 1


async def test_dropped_journal_table_answers_451_and_the_error_text_is_not_leaked(
    start_listener: StartListener, store: Store
) -> None:
    store.run_sync(lambda s: s.execute(text("DROP TABLE journal_outcomes")))
    store.run_sync(lambda s: s.execute(text("ALTER TABLE journal RENAME TO journal_gone")))
    async with start_listener() as srv:
        code, reply = await srv.send(message(), ["alice@example.org"])
    assert (code, reply) == (451, b"4.3.0 Try again later")
    assert srv.woken == []


async def test_closed_store_answers_451(start_listener: StartListener, store: Store) -> None:
    async with start_listener() as srv:
        await store.aclose()
        code, reply = await srv.send(message(), ["alice@example.org"])
    assert (code, reply) == (451, b"4.3.0 Try again later")


class ExplodingIntake:
    """An intake with a bug: raises something that is not a TemporaryFailure."""

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        raise RuntimeError("secret internal detail")


async def test_handler_exceptions_answer_451_without_exception_text(
    start_listener: StartListener,
) -> None:
    def exploding_is_local(addr: str) -> bool:
        if addr == "boom@example.org":
            raise ValueError("secret lookup detail")
        return addr in LOCAL

    async with start_listener(intake=ExplodingIntake(), local=exploding_is_local) as srv:
        dialog = await SmtpDialog.open("127.0.0.1", srv.port)
        await dialog.command("EHLO client.example.net")
        await dialog.command("MAIL FROM:<carol@example.net>")
        # An exception in handle_RCPT reaches aiosmtpd's handle_exception.
        assert await dialog.command("RCPT TO:<boom@example.org>") == ["451 4.3.0 Try again later"]
        assert (await dialog.command("RCPT TO:<alice@example.org>"))[0].startswith("250")
        assert (await dialog.command("DATA"))[0].startswith("354")
        replies = await dialog.send_data(message())
        assert replies == ["451 4.3.0 Try again later"]
        # The transaction was reset: a new one starts without "503 nested MAIL".
        assert (await dialog.command("MAIL FROM:<carol@example.net>"))[0].startswith("250")
        await dialog.close()


async def test_a_redelivered_message_gets_250_again_but_is_journaled_and_woken_once(
    start_listener: StartListener, store: Store
) -> None:
    raw = message("<retry@example.net>")
    async with start_listener() as srv:
        first = await srv.send(raw, ["alice@example.org"])
        second = await srv.send(raw, ["alice@example.org"])
    assert first[0] == second[0] == 250
    assert first[1] == second[1]  # same "queued as <id>"
    assert journal_count(store) == 1
    assert len(srv.woken) == 1
    # Different bytes under the same Message-ID are a different message.
    async with start_listener() as srv2:
        third = await srv2.send(message("<retry@example.net>", body="changed"), ["bob@example.org"])
    assert third[0] == 250
    assert third[1] != first[1]
    assert journal_count(store) == 2


async def test_bounce_with_null_sender_is_accepted(
    start_listener: StartListener, store: Store
) -> None:
    async with start_listener() as srv:
        dialog = await SmtpDialog.open("127.0.0.1", srv.port)
        await dialog.command("EHLO mx.example.net")
        assert (await dialog.command("MAIL FROM:<>"))[0].startswith("250")
        assert (await dialog.command("RCPT TO:<calendar@example.org>"))[0].startswith("250")
        await dialog.command("DATA")
        reply = await dialog.send_data(message("<dsn@example.net>"))
        await dialog.close()
    journal_id = int(reply[0].rsplit(" ", 1)[1])
    row = get_row(store, journal_id)
    assert row is not None
    assert row.envelope_from == ""


async def test_auth_is_not_advertised_when_no_users_are_configured(
    start_listener: StartListener,
) -> None:
    async with start_listener() as srv:
        dialog = await SmtpDialog.open("127.0.0.1", srv.port)
        ehlo = await dialog.command("EHLO client.example.net")
        await dialog.close()
    assert not any("AUTH" in line for line in ehlo)
    assert dialog.greeting[0].startswith("220 ")


needs_openssl = pytest.mark.skipif(
    not openssl_available(), reason="the openssl binary is needed to make a test certificate"
)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path)


@needs_openssl
async def test_starttls_required_and_auth_required_before_mail(
    start_listener: StartListener, store: Store, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    options = ListenerOptions(
        port=0,
        tls_cert=cert,
        tls_key=key,
        require_tls=True,
        auth_users={"mta": "s3cret"},
    )
    client_tls = ssl.create_default_context(cafile=str(cert))

    async with start_listener(options=options) as srv:

        def talk() -> dict[str, object]:
            seen: dict[str, object] = {}
            with srv.client() as smtp:
                smtp.ehlo("client.example.net")
                seen["auth_before_tls"] = smtp.has_extn("auth")
                seen["mail_before_tls"] = smtp.mail("carol@example.net")
                smtp.starttls(context=client_tls)
                smtp.ehlo("client.example.net")
                seen["auth_after_tls"] = smtp.has_extn("auth")
                seen["mail_before_auth"] = smtp.mail("carol@example.net")
                try:
                    smtp.login("mta", "wrong")
                except smtplib.SMTPAuthenticationError as exc:
                    seen["bad_login"] = exc.smtp_code
                smtp.login("mta", "s3cret")
                smtp.mail("carol@example.net")
                smtp.rcpt("alice@example.org")
                seen["data"] = smtp.data(message())
            return seen

        seen = await asyncio.to_thread(talk)
    assert seen["auth_before_tls"] is False
    assert seen["mail_before_tls"] == (530, b"Must issue a STARTTLS command first")
    assert seen["auth_after_tls"] is True
    assert seen["mail_before_auth"] == (530, b"5.7.0 Authentication required")
    assert seen["bad_login"] == 535
    data = seen["data"]
    assert isinstance(data, tuple)
    assert data[0] == 250
    journal_id = int(data[1].rsplit(b" ", 1)[1])
    row = get_row(store, journal_id)
    assert row is not None
    assert row.source == "smtp"


async def test_relay_mode_needs_auth_or_a_trusted_network_and_journals_as_relay(
    start_listener: StartListener, store: Store
) -> None:
    options = ListenerOptions(port=0, relay_mode=True, auth_users={"alice": "pw"})

    async with start_listener(options=options) as srv:

        def talk() -> dict[str, object]:
            seen: dict[str, object] = {}
            with srv.client() as smtp:
                smtp.ehlo("client.example.org")
                # AUTH is required before MAIL here (users configured; no TLS: loopback).
                smtp.login("alice", "pw")
                smtp.mail("alice@example.org")
                seen["remote"] = smtp.rcpt("dave@example.net")
                seen["data"] = smtp.data(message("<req@example.org>"))
                # A sender who is not local may not relay, even when authenticated.
                smtp.mail("mallory@elsewhere.test")
                seen["foreign_sender"] = smtp.rcpt("dave@example.net")
            return seen

        seen = await asyncio.to_thread(talk)
    assert seen["remote"] == (250, b"2.1.5 Ok (relay)")
    data = seen["data"]
    assert isinstance(data, tuple)
    assert data[0] == 250
    row = get_row(store, int(data[1].rsplit(b" ", 1)[1]))
    assert row is not None
    assert row.source == "relay"
    assert row.envelope_from == "alice@example.org"
    assert row.envelope_to == ["dave@example.net"]
    assert seen["foreign_sender"] == (550, b"5.1.1 <dave@example.net>: recipient not local")


async def test_relay_mode_without_auth_is_denied_unless_the_peer_is_trusted(
    start_listener: StartListener, store: Store
) -> None:
    untrusted = ListenerOptions(port=0, relay_mode=True)
    async with start_listener(options=untrusted) as srv:
        dialog = await SmtpDialog.open("127.0.0.1", srv.port)
        await dialog.command("EHLO client.example.org")
        await dialog.command("MAIL FROM:<alice@example.org>")
        denied = await dialog.command("RCPT TO:<dave@example.net>")
        await dialog.close()
    assert denied == ["550 5.7.1 <dave@example.net>: relay access denied"]

    trusted = replace(untrusted, relay_trusted_networks=("127.0.0.0/8",))
    async with start_listener(options=trusted) as srv:
        code, reply = await srv.send(
            message("<req2@example.org>"), ["dave@example.net"], mail_from="alice@example.org"
        )
    assert code == 250
    row = get_row(store, int(reply.rsplit(b" ", 1)[1]))
    assert row is not None
    assert row.source == "relay"


async def test_shutdown_stops_accepting_and_tells_idle_sessions_421(store: Store) -> None:
    listener = SmtpListener(
        ListenerOptions(port=0), JournalIntake(store, lambda: NOW), is_local, protocol="smtp"
    )
    background = RunningInBackground(listener, listener.ready)
    await background.__aenter__()
    port = listener.port
    dialog = await SmtpDialog.open("127.0.0.1", port)
    await dialog.command("EHLO client.example.net")
    await background.__aexit__(None, None, None)
    assert (await dialog.reply())[0].startswith("421 4.3.2")
    await dialog.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_shutdown_waits_for_a_transaction_in_data_and_answers_it(store: Store) -> None:
    gated = GatedIntake(JournalIntake(store, lambda: NOW))
    listener = SmtpListener(ListenerOptions(port=0), gated, is_local, protocol="smtp")
    background = RunningInBackground(listener, listener.ready)
    stopping = await background.__aenter__()
    dialog = await SmtpDialog.open("127.0.0.1", listener.port)
    await dialog.command("EHLO client.example.net")
    await dialog.command("MAIL FROM:<carol@example.net>")
    await dialog.command("RCPT TO:<alice@example.org>")
    await dialog.command("DATA")
    replying = asyncio.ensure_future(dialog.send_data(message("<late@example.net>")))
    await asyncio.wait_for(gated.entered.wait(), 10)
    stopping.set()  # SIGTERM while the message is being journaled
    gated.gate.set()
    reply = await asyncio.wait_for(replying, 10)
    await background.__aexit__(None, None, None)
    assert reply[0].startswith("250 2.0.0 Ok: queued as")
    assert (await dialog.reply())[0].startswith("421")
    await dialog.close()
    assert journal_count(store) == 1


async def test_concurrent_clients_each_get_their_own_journal_row(
    start_listener: StartListener, store: Store
) -> None:
    async with start_listener() as srv:
        results = await asyncio.gather(
            *(srv.send(message(f"<c{n}@example.net>"), ["alice@example.org"]) for n in range(8))
        )
    ids = {int(reply.rsplit(b" ", 1)[1]) for code, reply in results if code == 250}
    assert len(ids) == 8
    assert journal_count(store) == 8
    assert sorted(srv.woken) == sorted(ids)


# -- JournalIntake directly --------------------------------------------------------------------


ENVELOPE = Envelope(source="ingest", mail_from="carol@example.net", rcpt_tos=("alice@example.org",))


async def test_intake_refuses_oversize_before_touching_the_store(store: Store) -> None:
    intake = JournalIntake(store, lambda: NOW, max_message_bytes=100)
    with pytest.raises(MessageTooLarge) as raised:
        await intake.accept(message(body="x" * 200), ENVELOPE)
    assert raised.value.limit == 100
    assert journal_count(store) == 0


async def test_intake_keeps_the_message_when_the_wake_up_callback_fails(store: Store) -> None:
    def broken_wake(journal_id: int) -> None:
        raise RuntimeError("worker gone")

    accepted = await JournalIntake(store, lambda: NOW, broken_wake).accept(message(), ENVELOPE)
    assert accepted.duplicate is False
    row = get_row(store, accepted.journal_id)
    assert row is not None
    assert row.source == "ingest"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Message-ID: <a@b>\r\n", "<a@b>"),
        ("Message-Id:\r\n  <folded@example.net>\r\n", "<folded@example.net>"),
        ("Message-ID: not-an-id\r\n", None),
        ("", None),
    ],
)
def test_message_id_of_reads_the_first_id_token(header: str, expected: str | None) -> None:
    raw = f"From: a@b\r\n{header}Subject: x\r\n\r\nbody\r\n".encode()
    assert message_id_of(raw) == expected


async def test_a_line_longer_than_rfc_5321_allows_is_still_accepted_unchanged(
    start_listener: StartListener, store: Store
) -> None:
    raw = message("<long@example.net>", body="x" * 5000)
    async with start_listener() as srv:
        code, reply = await srv.send(raw, ["alice@example.org"])
    assert code == 250
    row = get_row(store, int(reply.rsplit(b" ", 1)[1]))
    assert row is not None
    assert row.raw == raw
