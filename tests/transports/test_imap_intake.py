"""The IMAP poller against a real Dovecot: pickup, durability order, reconnects, UIDs.

Every test runs a real Dovecot (tests/support/dovecot.py), the real poller and the real
journal on a migrated SQLite store.  Waiting is "eventually within N seconds" only.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import TypeVar

import pytest

from gateway.daemon import Runnable, run_daemon
from gateway.services.intake import JournalIntake
from gateway.services.ports import Accepted, Envelope, Intake, TemporaryFailure
from gateway.store import Store, imap_state, journal
from gateway.transports.imap import ImapAccountOptions, ImapPoller
from tests.support.dovecot import DovecotServer
from tests.transports.conftest import IMAP_PASSWORD, IMAP_USER

pytestmark = pytest.mark.dovecot

T = TypeVar("T")
RECIPIENT = "alice@example.org"
SEEN = "\\Seen"


def clock() -> datetime:
    return datetime.now(UTC)


def message(n: int, sender: str = "bob@example.net") -> bytes:
    return (
        f"Return-Path: <{sender}>\r\n"
        f"From: Bob <{sender}>\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: test message {n}\r\n"
        f"Message-ID: <msg-{n}@example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Body of message {n}.\r\n"
    ).encode()


def options(server: DovecotServer, **overrides: object) -> ImapAccountOptions:
    base = ImapAccountOptions(
        name="alice",
        host=server.host,
        port=server.port,
        tls="none",
        username=IMAP_USER,
        password=IMAP_PASSWORD,
        recipient=RECIPIENT,
        poll_interval_seconds=0.5,
        liveness_interval_seconds=0.5,
        liveness_timeout_seconds=2.0,
        command_timeout_seconds=5.0,
        reconnect_initial_seconds=0.1,
        reconnect_max_seconds=0.5,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def journal_rows(store: Store) -> list[journal.MessageSummary]:
    return await store.read(journal.list_messages, 100)


@asynccontextmanager
async def running(poller: ImapPoller) -> AsyncIterator[ImapPoller]:
    """Run ``poller`` in the background; stop it (and require a clean return) on exit."""
    stopping = asyncio.Event()
    task = asyncio.create_task(poller.run(stopping))
    try:
        yield poller
    finally:
        stopping.set()
        await asyncio.wait_for(task, 30)


class RecordingIntake:
    """The real JournalIntake, plus a log of what the poller handed over."""

    def __init__(self, inner: Intake) -> None:
        self.inner = inner
        self.calls: list[tuple[bytes, Envelope]] = []
        self.results: list[Accepted] = []

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        self.calls.append((raw, envelope))
        result = await self.inner.accept(raw, envelope)
        self.results.append(result)
        return result


def session_error(poller: ImapPoller, count: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return poller.session_errors >= count

    return check


async def wait_idle(poller: ImapPoller) -> None:
    async def idling() -> bool:
        return poller.state == "idle"

    await eventually(idling, "the poller is in IDLE")


# -- pickup ------------------------------------------------------------------------------


async def test_message_delivered_during_idle_is_journaled_and_marked_seen(
    dovecot: DovecotServer, store: Store
) -> None:
    intake = RecordingIntake(JournalIntake(store, clock))
    # A liveness interval far beyond the wait below: only the IDLE push can wake it.
    poller = ImapPoller(options(dovecot, liveness_interval_seconds=60.0), intake, store, clock)
    async with running(poller):
        await wait_idle(poller)
        await in_thread(dovecot.deliver, IMAP_USER, message(1))

        async def journaled() -> bool:
            return len(await journal_rows(store)) == 1

        await eventually(journaled, "the message is journaled", timeout=15)

        async def seen() -> bool:
            return SEEN in (await in_thread(dovecot.list_flags, IMAP_USER))[1]

        await eventually(seen, "the message is marked \\Seen")
    (row,) = await journal_rows(store)
    assert row.source == "imap"
    assert row.message_id == "<msg-1@example.net>"
    assert row.envelope_from == "bob@example.net"  # from Return-Path
    assert row.envelope_to == [RECIPIENT]
    raw, envelope = intake.calls[0]
    assert raw == message(1)
    assert envelope.imap_account == "alice"
    assert envelope.source == "imap"
    state = await store.read(imap_state.get, "alice", "INBOX")
    assert state is not None
    assert state.last_uid == 1
    assert state.uidvalidity == await in_thread(dovecot.uidvalidity, IMAP_USER)

    # Stopping left IDLE and logged out: no session left, and Dovecot saw a LOGOUT
    # rather than a dropped connection.
    async def logged_out() -> bool:
        return "Disconnected: Logged out" in await in_thread(dovecot.log_path.read_text)

    await eventually(logged_out, "Dovecot logs the LOGOUT")
    server_log = await in_thread(dovecot.log_path.read_text)
    assert "Disconnected: Connection closed" not in server_log.split("Login: user=<alice>")[1]
    assert "alice" not in await in_thread(dovecot.doveadm, "who")


async def test_lmtp_delivery_during_idle_carries_the_envelope_sender(
    dovecot: DovecotServer, store: Store
) -> None:
    if dovecot.lmtp_port is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dovecot-lmtpd is required in CI (CI=true)")
        pytest.skip("dovecot-lmtpd is not installed: apt-get install dovecot-lmtpd")
    raw = message(1).split(b"\r\n", 1)[1]  # no Return-Path: LMTP adds it
    poller = ImapPoller(
        options(dovecot, liveness_interval_seconds=60.0), JournalIntake(store, clock), store, clock
    )
    async with running(poller):
        await wait_idle(poller)
        await in_thread(dovecot.deliver_lmtp, IMAP_USER, raw, "Organizer@Example.NET")

        async def journaled() -> bool:
            return len(await journal_rows(store)) == 1

        await eventually(journaled, "the LMTP delivery is picked up by IDLE", timeout=15)
    (row,) = await journal_rows(store)
    assert row.envelope_from == "organizer@example.net"
    assert row.message_id == "<msg-1@example.net>"


async def test_polling_mode_without_idle_picks_up_messages(
    dovecot: DovecotServer, store: Store
) -> None:
    await in_thread(dovecot.deliver, IMAP_USER, message(1))
    poller = ImapPoller(options(dovecot, use_idle=False), JournalIntake(store, clock), store, clock)
    states: set[str] = set()
    async with running(poller):

        async def two_journaled() -> bool:
            states.add(poller.state)
            return len(await journal_rows(store)) == 2

        await eventually(lambda: asyncio.sleep(0, result=poller.passes >= 1), "a first pass")
        await in_thread(dovecot.deliver, IMAP_USER, message(2))
        await eventually(two_journaled, "both messages are journaled")
    assert "idle" not in states
    assert "polling" in states
    flags = await in_thread(dovecot.list_flags, IMAP_USER)
    assert all(SEEN in f for f in flags.values())


# -- "accepted means durable" --------------------------------------------------------------


class FlakyIntake:
    """Raises TemporaryFailure ``failures`` times, noting the server flags at each call."""

    def __init__(self, inner: Intake, server: DovecotServer, failures: int) -> None:
        self.inner = inner
        self.server = server
        self.failures = failures
        self.flags_at_accept: list[set[str]] = []

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        flags = await in_thread(self.server.list_flags, IMAP_USER)
        self.flags_at_accept.append(flags[1])
        if self.failures > 0:
            self.failures -= 1
            raise TemporaryFailure("database is down")
        return await self.inner.accept(raw, envelope)


async def test_temporary_failure_leaves_message_unseen_and_it_is_retried(
    dovecot: DovecotServer, store: Store
) -> None:
    await in_thread(dovecot.deliver, IMAP_USER, message(1))
    intake = FlakyIntake(JournalIntake(store, clock), dovecot, failures=2)
    poller = ImapPoller(options(dovecot), intake, store, clock)
    async with running(poller):

        async def failed_twice() -> bool:
            return len(intake.flags_at_accept) >= 2

        await eventually(failed_twice, "two refused attempts")
        # After a refusal: not journaled, not seen, still in place, position not advanced.
        assert await journal_rows(store) == []
        assert SEEN not in (await in_thread(dovecot.list_flags, IMAP_USER))[1]
        state = await store.read(imap_state.get, "alice", "INBOX")
        assert state is not None
        assert state.last_uid == 0

        async def seen() -> bool:
            return SEEN in (await in_thread(dovecot.list_flags, IMAP_USER))[1]

        await eventually(seen, "the message is processed on a later pass")
    assert len(await journal_rows(store)) == 1
    # FETCH used BODY.PEEK[]: the message was never \Seen while the intake ran.
    assert len(intake.flags_at_accept) == 3
    assert all(SEEN not in flags for flags in intake.flags_at_accept)


async def test_processed_messages_move_to_the_processed_folder(
    dovecot: DovecotServer, store: Store
) -> None:
    for n in (1, 2):
        await in_thread(dovecot.deliver, IMAP_USER, message(n))
    poller = ImapPoller(
        options(dovecot, processed_folder="Traité iMIP"),
        JournalIntake(store, clock),
        store,
        clock,
    )
    async with running(poller):

        async def moved() -> bool:
            return await in_thread(dovecot.count, IMAP_USER, "Traité iMIP") == 2

        await eventually(moved, "both messages moved (the folder is created on demand)")
    assert await in_thread(dovecot.count, IMAP_USER, "INBOX") == 0
    flags = await in_thread(dovecot.list_flags, IMAP_USER, "Traité iMIP")
    assert all(SEEN in f for f in flags.values())
    assert len(await journal_rows(store)) == 2


async def test_message_the_intake_keeps_refusing_goes_to_the_failed_folder(
    dovecot: DovecotServer, store: Store
) -> None:
    class Refuses:
        def __init__(self, inner: Intake) -> None:
            self.inner = inner
            self.refused = 0

        async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
            if b"message 1." in raw:
                self.refused += 1
                raise ValueError("cannot handle this one")
            return await self.inner.accept(raw, envelope)

    for n in (1, 2):
        await in_thread(dovecot.deliver, IMAP_USER, message(n))
    intake = Refuses(JournalIntake(store, clock))
    poller = ImapPoller(
        options(dovecot, failed_folder="Failed", max_message_attempts=3), intake, store, clock
    )
    async with running(poller):

        async def settled() -> bool:
            return (
                await in_thread(dovecot.count, IMAP_USER, "Failed") == 1
                and len(await journal_rows(store)) == 1
            )

        await eventually(settled, "the bad message is set aside, the good one journaled")
    assert intake.refused == 3
    assert await in_thread(dovecot.count, IMAP_USER, "INBOX") == 1  # the good one, seen
    (failed_flags,) = (await in_thread(dovecot.list_flags, IMAP_USER, "Failed")).values()
    assert SEEN not in failed_flags  # never accepted: left for a human to read
    (row,) = await journal_rows(store)
    assert row.message_id == "<msg-2@example.net>"


# -- connection trouble ------------------------------------------------------------------


async def test_dovecot_restart_mid_run_loses_nothing_and_duplicates_nothing(
    dovecot: DovecotServer, store: Store
) -> None:
    intake = RecordingIntake(JournalIntake(store, clock))
    poller = ImapPoller(options(dovecot), intake, store, clock)
    async with running(poller):
        await wait_idle(poller)
        await in_thread(dovecot.deliver, IMAP_USER, message(1))

        async def rows(n: int) -> bool:
            return len(await journal_rows(store)) == n

        await eventually(lambda: rows(1), "the first message is journaled")
        await in_thread(dovecot.stop)

        await eventually(session_error(poller), "the poller notices the server is gone")
        await in_thread(dovecot.start)
        await in_thread(dovecot.deliver, IMAP_USER, message(2))
        await eventually(lambda: rows(2), "the message delivered after the restart")
        # A few more passes over the mailbox add nothing.
        passes = poller.passes
        await eventually(
            lambda: asyncio.sleep(0, result=poller.passes >= passes + 3), "more passes"
        )
    assert len(await journal_rows(store)) == 2
    # Each message was offered once: nothing re-fetched after the reconnects.
    assert [r.duplicate for r in intake.results] == [False, False]
    flags = await in_thread(dovecot.list_flags, IMAP_USER)
    assert sorted(flags) == [1, 2]
    assert all(SEEN in f for f in flags.values())


async def test_silently_dead_connection_is_noticed_by_the_liveness_check(
    dovecot: DovecotServer, store: Store
) -> None:
    """A frozen server process keeps the socket open but never answers."""
    poller = ImapPoller(
        options(dovecot, liveness_interval_seconds=0.5, liveness_timeout_seconds=1.0),
        JournalIntake(store, clock),
        store,
        clock,
    )
    frozen: list[int] = []
    try:
        async with running(poller):
            await wait_idle(poller)
            who = await in_thread(dovecot.doveadm, "who", "-1")
            # "alice imap <pid> 127.0.0.1" -- the imap process serving the poller.
            pids = [int(line.split()[2]) for line in who.splitlines() if line.startswith("alice")]
            assert len(pids) == 1
            os.kill(pids[0], signal.SIGSTOP)
            frozen.append(pids[0])
            await in_thread(dovecot.deliver, IMAP_USER, message(1))

            async def journaled() -> bool:
                return len(await journal_rows(store)) == 1

            await eventually(journaled, "picked up over a new connection", timeout=20)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


async def test_server_down_at_start_is_retried_until_it_comes_up(
    dovecot: DovecotServer, store: Store
) -> None:
    await in_thread(dovecot.stop)
    poller = ImapPoller(options(dovecot), JournalIntake(store, clock), store, clock)
    async with running(poller):
        await eventually(session_error(poller), "the connection is refused")
        assert "ImapConnectionError" in (poller.last_error or "")
        await in_thread(dovecot.start)
        await in_thread(dovecot.deliver, IMAP_USER, message(1))

        async def journaled() -> bool:
            return len(await journal_rows(store)) == 1

        await eventually(journaled, "processed once the server is up")


# -- UIDs and UIDVALIDITY -----------------------------------------------------------------


async def test_uidvalidity_change_rescans_without_processing_twice(
    dovecot: DovecotServer, store: Store
) -> None:
    for n in (1, 2):
        await in_thread(dovecot.deliver, IMAP_USER, message(n))
    first = ImapPoller(options(dovecot), JournalIntake(store, clock), store, clock)
    async with running(first):

        async def two() -> bool:
            return len(await journal_rows(store)) == 2

        await eventually(two, "the first two messages are journaled")
    new_validity = await in_thread(dovecot.change_uidvalidity, IMAP_USER)
    await in_thread(dovecot.deliver, IMAP_USER, message(3))

    intake = RecordingIntake(JournalIntake(store, clock))
    second = ImapPoller(options(dovecot), intake, store, clock)
    async with running(second):

        async def three() -> bool:
            return len(await journal_rows(store)) == 3 and len(intake.results) == 3

        await eventually(three, "the third message is journaled after the rescan")
    # The rescan offered all three again; the journal recognised the first two.
    assert [r.duplicate for r in intake.results] == [True, True, False]
    assert len(await journal_rows(store)) == 3
    state = await store.read(imap_state.get, "alice", "INBOX")
    assert state is not None
    assert state.uidvalidity == new_validity
    assert state.last_uid == max(await in_thread(dovecot.uids, IMAP_USER))


async def test_last_uid_survives_a_poller_restart(dovecot: DovecotServer, store: Store) -> None:
    for n in (1, 2):
        await in_thread(dovecot.deliver, IMAP_USER, message(n))
    # mark_seen off: nothing on the server says which messages were taken.
    first = ImapPoller(options(dovecot, mark_seen=False), JournalIntake(store, clock), store, clock)
    async with running(first):

        async def two() -> bool:
            return len(await journal_rows(store)) == 2

        await eventually(two, "the first two messages are journaled")
    await in_thread(dovecot.deliver, IMAP_USER, message(3))

    intake = RecordingIntake(JournalIntake(store, clock))
    second = ImapPoller(options(dovecot, mark_seen=False), intake, store, clock)
    async with running(second):

        async def three() -> bool:
            return len(await journal_rows(store)) == 3

        await eventually(three, "the new message is journaled")
        passes = second.passes
        await eventually(
            lambda: asyncio.sleep(0, result=second.passes >= passes + 2), "more passes"
        )
    # Only UID 3 was fetched and offered: the remembered position held.
    assert [raw for raw, _ in intake.calls] == [message(3)]
    flags = await in_thread(dovecot.list_flags, IMAP_USER)
    assert all(SEEN not in f for f in flags.values())


# -- TLS --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["implicit", "starttls"])
async def test_tls_modes_verify_the_server_certificate(
    dovecot_tls: DovecotServer, store: Store, mode: str
) -> None:
    assert dovecot_tls.cert_file is not None
    assert dovecot_tls.tls_port is not None
    context = ssl.create_default_context(cafile=str(dovecot_tls.cert_file))
    port = dovecot_tls.tls_port if mode == "implicit" else dovecot_tls.port
    await in_thread(dovecot_tls.deliver, IMAP_USER, message(1))
    poller = ImapPoller(
        options(dovecot_tls, tls=mode, port=port, ssl_context=context),
        JournalIntake(store, clock),
        store,
        clock,
    )
    async with running(poller):

        async def journaled() -> bool:
            return len(await journal_rows(store)) == 1

        await eventually(journaled, f"the message is fetched over {mode} TLS")


async def test_starttls_required_but_not_offered_never_logs_in(
    dovecot: DovecotServer, store: Store
) -> None:
    await in_thread(dovecot.deliver, IMAP_USER, message(1))
    poller = ImapPoller(options(dovecot, tls="starttls"), JournalIntake(store, clock), store, clock)
    async with running(poller):
        await eventually(session_error(poller), "the poller refuses to go on in clear text")
    assert "does not offer STARTTLS" in (poller.last_error or "")
    assert await journal_rows(store) == []
    log = await in_thread(dovecot.log_path.read_text)
    assert "Login: user=<alice>" not in log


async def test_untrusted_server_certificate_is_refused(
    dovecot_tls: DovecotServer, store: Store
) -> None:
    assert dovecot_tls.tls_port is not None
    await in_thread(dovecot_tls.deliver, IMAP_USER, message(1))
    # The system trust store does not know the self-signed test certificate.
    poller = ImapPoller(
        options(dovecot_tls, tls="implicit", port=dovecot_tls.tls_port),
        JournalIntake(store, clock),
        store,
        clock,
    )
    async with running(poller):
        await eventually(session_error(poller), "the poller refuses the certificate")
    assert "certificate verify failed" in (poller.last_error or "").lower()
    assert await journal_rows(store) == []
    assert "Login: user=<alice>" not in await in_thread(dovecot_tls.log_path.read_text)


async def test_wrong_password_backs_off_and_touches_nothing(
    dovecot: DovecotServer, store: Store
) -> None:
    await in_thread(dovecot.deliver, IMAP_USER, message(1))
    poller = ImapPoller(
        options(dovecot, password="wrong"), JournalIntake(store, clock), store, clock
    )
    async with running(poller):
        await eventually(session_error(poller), "the refused login ends the session")
    assert "AUTHENTICATIONFAILED" in (poller.last_error or "")
    assert await journal_rows(store) == []
    assert await store.read(imap_state.get, "alice", "INBOX") is None
    assert SEEN not in (await in_thread(dovecot.list_flags, IMAP_USER))[1]


async def test_poller_runs_under_the_daemon_and_drains_on_stop(
    dovecot: DovecotServer, store: Store
) -> None:
    poller: Runnable = ImapPoller(options(dovecot), JournalIntake(store, clock), store, clock)
    stopping = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon([poller], drain_timeout=20, stopping=stopping, handle_signals=False)
    )
    await in_thread(dovecot.deliver, IMAP_USER, message(1))

    async def journaled() -> bool:
        return len(await journal_rows(store)) == 1

    await eventually(journaled, "the message is journaled under the daemon")
    stopping.set()
    await asyncio.wait_for(daemon, 30)  # returns normally: no DaemonFailure
    assert "alice" not in await in_thread(dovecot.doveadm, "who")


async def test_server_without_idle_and_move_is_polled_and_copy_expunge_is_used(
    dovecot_basic: DovecotServer, store: Store
) -> None:
    server = dovecot_basic
    for n in (1, 2):
        await in_thread(server.deliver, IMAP_USER, message(n))
    # use_idle is on, but the server does not offer IDLE: the poller falls back to NOOP.
    poller = ImapPoller(
        options(server, processed_folder="Done"), JournalIntake(store, clock), store, clock
    )
    states: set[str] = set()
    async with running(poller):

        async def moved() -> bool:
            states.add(poller.state)
            return await in_thread(server.count, IMAP_USER, "Done") == 2

        await eventually(moved, "both messages copied to Done")

        async def expunged() -> bool:
            states.add(poller.state)
            return await in_thread(server.count, IMAP_USER, "INBOX") == 0

        # COPY + \Deleted + UID EXPUNGE (RFC 4315) took them out of INBOX.
        await eventually(expunged, "the originals are expunged")
    assert "idle" not in states
    flags = await in_thread(server.list_flags, IMAP_USER, "Done")
    assert all(SEEN in f for f in flags.values())
    assert all("\\Deleted" not in f for f in flags.values())
    assert len(await journal_rows(store)) == 2


async def test_large_message_with_imap_syntax_in_its_body_arrives_byte_exact(
    dovecot: DovecotServer, store: Store
) -> None:
    # Lines that look like IMAP literals, parentheses and tagged replies must not confuse
    # the response parser; 3 MB crosses many TCP reads.
    tricky = b"* 1 FETCH (UID 9 BODY[] {12}\r\nA1 OK done\r\n)))((\r\n{5}\r\n"
    filler = b"".join(b"line %06d " % i + b"x" * 60 + b"\r\n" for i in range(40_000))
    raw = message(1).replace(b"Body of message 1.\r\n", tricky + filler + tricky)
    await in_thread(dovecot.deliver, IMAP_USER, raw)
    intake = RecordingIntake(JournalIntake(store, clock))
    poller = ImapPoller(options(dovecot), intake, store, clock)
    async with running(poller):

        async def journaled() -> bool:
            return len(await journal_rows(store)) == 1

        await eventually(journaled, "the large message is journaled")
    assert intake.calls[0][0] == raw
