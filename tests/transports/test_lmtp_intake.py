"""The LMTP listener over real sockets: one reply per accepted recipient (RFC 2033 4.2).

aiosmtpd's LMTP class replies once after DATA; ours must answer every accepted RCPT,
in order, with the same outcome (one journal commit covers all recipients).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy import text

from gateway.services.intake import JournalIntake
from gateway.store import Store
from gateway.store import journal as journal_repo
from gateway.store.models import JournalRow
from gateway.transports.smtp import ListenerOptions, SmtpListener
from tests.support.smtp_sink import RunningInBackground, SmtpDialog

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LOCAL = {"alice@example.org", "bob@example.org"}


def message(message_id: str = "<lmtp1@example.net>", lines: int = 3) -> bytes:
    body = "".join(f"line {n}\r\n" for n in range(lines))
    return (
        f"From: carol@example.net\r\nTo: alice@example.org\r\nMessage-ID: {message_id}\r\n"
        f"Subject: hi\r\n\r\n{body}"
    ).encode()


@asynccontextmanager
async def lmtp(
    store: Store, woken: list[int] | None = None, max_bytes: int = 64 * 1024
) -> AsyncIterator[SmtpDialog]:
    listener = SmtpListener(
        ListenerOptions(port=0, max_message_bytes=max_bytes),
        JournalIntake(store, lambda: NOW, woken.append if woken is not None else None),
        lambda addr: addr in LOCAL,
        protocol="lmtp",
    )
    async with RunningInBackground(listener, listener.ready):
        dialog = await SmtpDialog.open("127.0.0.1", listener.port)
        try:
            lhlo = await dialog.command("LHLO mta.example.org")
            assert lhlo[-1].startswith("250 ")
            yield dialog
        finally:
            await dialog.close()


async def transaction(dialog: SmtpDialog, rcpts: list[str]) -> list[str]:
    """MAIL + RCPTs + DATA; returns the RCPT replies (first lines)."""
    assert (await dialog.command("MAIL FROM:<carol@example.net>"))[0].startswith("250")
    rcpt_replies = [(await dialog.command(f"RCPT TO:<{r}>"))[0] for r in rcpts]
    assert (await dialog.command("DATA"))[0].startswith("354")
    return rcpt_replies


async def test_each_accepted_recipient_gets_its_own_250_after_the_commit(store: Store) -> None:
    woken: list[int] = []
    async with lmtp(store, woken) as dialog:
        rcpt = await transaction(
            dialog, ["alice@example.org", "mallory@elsewhere.test", "bob@example.org"]
        )
        assert rcpt[1] == "550 5.1.1 <mallory@elsewhere.test>: recipient not local"
        replies = await dialog.send_data(message(), replies=2)
        # Nothing more is pending: the next command gets its own reply.
        assert await dialog.command("NOOP") == ["250 OK"]
    assert len(replies) == 2
    assert replies[0] == replies[1]
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    journal_id = int(replies[0].rsplit(" ", 1)[1])
    row = store.read_sync(lambda s: s.get(JournalRow, journal_id))
    assert row is not None
    assert row.source == "lmtp"
    assert row.envelope_to == ["alice@example.org", "bob@example.org"]
    assert woken == [journal_id]


async def test_database_failure_gives_every_recipient_451(store: Store) -> None:
    store.run_sync(lambda s: s.execute(text("DROP TABLE journal_outcomes")))
    store.run_sync(lambda s: s.execute(text("ALTER TABLE journal RENAME TO journal_gone")))
    async with lmtp(store) as dialog:
        await transaction(dialog, ["alice@example.org", "bob@example.org"])
        replies = await dialog.send_data(message(), replies=2)
        assert await dialog.command("NOOP") == ["250 OK"]
    assert replies == ["451 4.3.0 Try again later"] * 2


async def test_oversize_message_gives_every_recipient_552(store: Store) -> None:
    async with lmtp(store, max_bytes=2048) as dialog:
        await transaction(dialog, ["alice@example.org", "bob@example.org"])
        replies = await dialog.send_data(message(lines=400), replies=2)
        assert await dialog.command("NOOP") == ["250 OK"]
    assert replies == ["552 5.3.4 Message too big"] * 2
    assert store.read_sync(journal_repo.list_messages) == []


async def test_redelivery_after_a_lost_reply_is_recognised(store: Store) -> None:
    woken: list[int] = []
    async with lmtp(store, woken) as dialog:
        await transaction(dialog, ["alice@example.org"])
        first = await dialog.send_data(message("<again@example.net>"))
        await transaction(dialog, ["alice@example.org"])
        second = await dialog.send_data(message("<again@example.net>"))
    assert first == second
    assert first[0].startswith("250 ")
    assert len(store.read_sync(journal_repo.list_messages)) == 1
    assert len(woken) == 1


async def test_smtp_greetings_are_refused_on_lmtp(store: Store) -> None:
    async with lmtp(store) as dialog:
        assert (await dialog.command("EHLO mta.example.org"))[0].startswith("500")
        assert (await dialog.command("HELO mta.example.org"))[0].startswith("500")
