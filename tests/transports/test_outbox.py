"""Outbound delivery: RelaySender against a real SMTP sink, OutboxWorker on a real store.

The relay is :class:`tests.support.smtp_sink.SmtpSink` (aiosmtpd on port 0) with
scripted replies.  Time for the store is a movable fake clock, so backoff and leases are
exercised without sleeping; waits are bounded polls for a state, never timing checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.store import Store
from gateway.store import outbox as outbox_repo
from gateway.store.models import OutboxRow
from gateway.transports.smtp_sender import RelayOptions, RelaySender
from gateway.workers.outbox import FailedDelivery, OutboxOptions, OutboxWorker
from tests.support.smtp_sink import (
    RunningInBackground,
    SmtpSink,
    openssl_available,
    self_signed_cert,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def mail(n: int = 1, recipient: str = "dave@example.net") -> bytes:
    return (
        f"From: alice@example.org\r\nTo: {recipient}\r\nSubject: Invitation {n}\r\n"
        f"Message-ID: <out{n}@example.org>\r\nAuto-Submitted: auto-generated\r\n\r\nbody {n}\r\n"
    ).encode()


def enqueue(
    store: Store, n: int = 1, *, now: datetime = T0, recipient: str = "dave@example.net"
) -> int:
    return store.run_sync(
        outbox_repo.enqueue,
        owner="alice@example.org",
        sender="alice@example.org",
        recipient=recipient,
        method="REQUEST",
        uid=f"uid-{n}",
        payload=mail(n, recipient),
        message_id=f"<out{n}@example.org>",
        now=now,
    )


def row(store: Store, outbox_id: int) -> OutboxRow:
    found = store.read_sync(outbox_repo.get, outbox_id)
    assert found is not None
    return found


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds (bounded); the tests never assert durations."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with SmtpSink() as s:
        yield s


def relay_options(sink: SmtpSink, **overrides: Any) -> RelayOptions:
    return replace(RelayOptions(host="127.0.0.1", port=sink.port, timeout_seconds=10), **overrides)


# -- RelaySender ----------------------------------------------------------------------------


async def test_sender_delivers_unchanged_bytes_and_reuses_one_connection(sink: SmtpSink) -> None:
    sender = RelaySender(relay_options(sink, max_connections=1))
    try:
        results = [
            await sender.send("alice@example.org", ["dave@example.net"], mail(n)) for n in range(3)
        ]
    finally:
        await sender.aclose()
    assert [r.status for r in results] == ["sent"] * 3
    assert [m.data for m in sink.messages] == [mail(n) for n in range(3)]
    assert sink.connections == 1
    assert {m.connection for m in sink.messages} == {1}
    # Back to back, the session is reused without an RSET round trip (the server
    # cleared its state when it answered the end of DATA, RFC 5321 4.1.1.4).
    assert "RSET" not in [verb for _, verb in sink.commands]
    assert (1, "QUIT") in sink.commands  # aclose() says goodbye


async def test_sender_checks_a_session_that_sat_idle_with_rset_before_reuse(
    sink: SmtpSink,
) -> None:
    clock = [1000.0]
    sender = RelaySender(
        relay_options(sink, max_connections=1, recheck_seconds=2.0), monotonic=lambda: clock[0]
    )
    try:
        await sender.send("alice@example.org", ["dave@example.net"], mail(1))
        clock[0] += 5.0  # idle longer than recheck_seconds (but not idle_seconds)
        second = await sender.send("alice@example.org", ["dave@example.net"], mail(2))
    finally:
        await sender.aclose()
    assert second.status == "sent"
    verbs = [verb for _, verb in sink.commands]
    assert verbs.count("RSET") == 1  # RFC 5321 4.1.1.5: proves the session alive
    assert verbs.index("RSET") < max(i for i, v in enumerate(verbs) if v == "MAIL")
    assert sink.connections == 1


async def test_sender_classifies_4xx_as_temporary_and_5xx_as_permanent(sink: SmtpSink) -> None:
    sink.script_data("451 4.3.0 try later", "550 5.7.1 rejected by policy")
    sender = RelaySender(relay_options(sink))
    try:
        temporary = await sender.send("alice@example.org", ["dave@example.net"], mail(1))
        permanent = await sender.send("alice@example.org", ["dave@example.net"], mail(2))
    finally:
        await sender.aclose()
    assert (temporary.status, temporary.code) == ("temporary", 451)
    assert (permanent.status, permanent.code) == ("permanent", 550)
    assert "rejected by policy" in permanent.describe()
    assert sink.messages == []


async def test_sender_handles_recipient_refusals(sink: SmtpSink) -> None:
    sender = RelaySender(relay_options(sink))
    try:
        sink.script_rcpt("550 5.1.1 no such user", "250 2.1.5 ok")
        some = await sender.send(
            "alice@example.org", ["gone@example.net", "dave@example.net"], mail(1)
        )
        sink.script_rcpt("550 5.1.1 no such user")
        all_permanent = await sender.send("alice@example.org", ["gone@example.net"], mail(2))
        sink.script_rcpt("452 4.2.2 mailbox full")
        all_temporary = await sender.send("alice@example.org", ["full@example.net"], mail(3))
    finally:
        await sender.aclose()
    assert some.status == "sent"
    assert dict(some.refused) == {"gone@example.net": (550, "5.1.1 no such user")}
    assert sink.messages[0].rcpt_tos == ("dave@example.net",)
    assert all_permanent.status == "permanent"
    assert all_temporary.status == "temporary"
    assert len(sink.messages) == 1


async def test_sender_reports_an_unreachable_relay_as_temporary() -> None:
    async with SmtpSink() as gone:
        port = gone.port
    sender = RelaySender(RelayOptions(host="127.0.0.1", port=port, timeout_seconds=5))
    result = await sender.send("alice@example.org", ["dave@example.net"], mail())
    assert result.status == "temporary"
    assert result.code is None
    assert "cannot connect" in result.detail


async def test_sender_reconnects_when_the_pooled_session_died(sink: SmtpSink) -> None:
    sender = RelaySender(relay_options(sink, max_connections=1))
    try:
        first = await sender.send("alice@example.org", ["dave@example.net"], mail(1))
        await sink.drop_connections()
        second = await sender.send("alice@example.org", ["dave@example.net"], mail(2))
    finally:
        await sender.aclose()
    # The relay dropped the pooled session; the reused (unchecked) session fails
    # without a reply, and the message goes out at once on a new connection.
    assert (first.status, second.status) == ("sent", "sent")
    assert [m.connection for m in sink.messages] == [1, 2]


needs_openssl = pytest.mark.skipif(
    not openssl_available(), reason="the openssl binary is needed to make a test certificate"
)


@needs_openssl
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_sender_uses_tls_and_auth(
    tmp_path: Path, mode: Literal["starttls", "implicit"]
) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with SmtpSink(tls=(mode, cert, key), users={"gw": "pw"}) as tls_sink:
        options = RelayOptions(
            host="127.0.0.1",
            port=tls_sink.port,
            tls=mode,
            username="gw",
            password="pw",
            ca_file=cert,
            timeout_seconds=10,
        )
        sender = RelaySender(options)
        try:
            result = await sender.send("alice@example.org", ["dave@example.net"], mail())
            bad = RelaySender(replace(options, password="wrong"))
            refused = await bad.send("alice@example.org", ["dave@example.net"], mail(2))
        finally:
            await sender.aclose()
            await bad.aclose()
    assert result.status == "sent"
    assert tls_sink.messages[0].tls is True
    assert tls_sink.messages[0].login == "gw"
    # A refused login is our relay session's problem, not the message's: retry later.
    assert refused.status == "temporary"
    assert refused.code == 535


# -- OutboxWorker ---------------------------------------------------------------------------


@pytest.fixture
async def workers(
    store: Store, sink: SmtpSink
) -> AsyncIterator[Callable[..., RunningInBackground]]:
    """Build workers; each is run with ``async with background(worker)``."""
    senders: list[RelaySender] = []

    def build(
        clock: FakeClock, failures: list[FailedDelivery] | None = None, **options: Any
    ) -> RunningInBackground:
        reported = failures if failures is not None else []
        sender = RelaySender(relay_options(sink, max_connections=options.get("max_connections", 2)))
        senders.append(sender)

        async def on_failure(failed: FailedDelivery) -> None:
            reported.append(failed)

        opts = replace(
            OutboxOptions(
                poll_interval_seconds=0.05, retry_initial_seconds=60, retry_max_seconds=600
            ),
            **options,
        )
        worker = OutboxWorker(store, sender, clock, opts, on_failure, rng=lambda: 1.0)
        return RunningInBackground(worker)

    yield build
    for sender in senders:
        await sender.aclose()


async def test_a_451_is_retried_with_backoff_and_then_delivered_exactly_once(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    clock = FakeClock()
    failures: list[FailedDelivery] = []
    sink.script_data("451 4.3.0 greylisted")
    outbox_id = enqueue(store)
    background = workers(clock, failures, worker_id="w1")
    async with background:
        await sink.wait_for_attempts(1)
        await eventually(lambda: row(store, outbox_id).status == "pending")
        waiting = row(store, outbox_id)
        assert waiting.last_error is not None
        assert "451" in waiting.last_error
        # jitter 1.0: the full first delay, retry_initial_seconds.
        assert waiting.next_attempt_at == T0 + timedelta(seconds=60)
        clock.advance(seconds=61)
        background.runnable.notify()
        await sink.wait_for_messages(1)
        await eventually(lambda: row(store, outbox_id).status == "sent")
    done = row(store, outbox_id)
    assert done.attempts == 2
    assert done.sent_at == T0 + timedelta(seconds=61)
    assert done.message_id == "<out1@example.org>"
    assert [a.reply[:3] for a in sink.attempts] == ["451", "250"]
    assert len(sink.messages) == 1
    assert sink.messages[0].data == mail(1)
    assert failures == []


async def test_a_550_fails_permanently_at_once_and_reports_the_attendee(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    clock = FakeClock()
    failures: list[FailedDelivery] = []
    sink.script_data("550 5.1.1 mailbox unavailable")
    outbox_id = enqueue(store)
    async with workers(clock, failures):
        await eventually(lambda: row(store, outbox_id).status == "failed")
        await eventually(lambda: len(failures) == 1)
    failed = row(store, outbox_id)
    assert failed.attempts == 1
    assert failed.last_error is not None
    assert "550" in failed.last_error
    assert failures[0].row.id == outbox_id
    assert failures[0].row.recipient == "dave@example.net"
    assert failures[0].code == 550
    assert failures[0].expired is False
    assert len(sink.attempts) == 1


async def test_temporary_failures_past_max_age_are_given_up_and_reported(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    clock = FakeClock()
    failures: list[FailedDelivery] = []
    sink.script_data("451 4.3.0 still down")
    outbox_id = enqueue(store, now=T0 - timedelta(hours=73))
    async with workers(clock, failures, max_age_hours=72):
        await eventually(lambda: len(failures) == 1)
    failed = row(store, outbox_id)
    assert failed.status == "failed"
    assert failed.last_error is not None
    assert failed.last_error.startswith("gave up after 1 attempts in 72 hours")
    assert failures[0].expired is True
    assert failures[0].code == 451


async def test_several_rows_go_over_one_reused_connection(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    clock = FakeClock()
    ids = [enqueue(store, n) for n in range(4)]
    async with workers(clock, [], max_connections=1):
        await sink.wait_for_messages(4)
        await eventually(lambda: all(row(store, i).status == "sent" for i in ids))
    assert sink.connections == 1
    assert sorted(m.data for m in sink.messages) == sorted(mail(n) for n in range(4))


async def test_notify_wakes_an_idle_worker_for_new_rows(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    clock = FakeClock()
    background = workers(clock, [], poll_interval_seconds=3600)
    async with background:
        outbox_id = enqueue(store, 7)
        background.runnable.notify()
        await sink.wait_for_messages(1)
        await eventually(lambda: row(store, outbox_id).status == "sent")


async def test_an_expired_lease_of_a_crashed_worker_lets_another_worker_deliver(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    outbox_id = enqueue(store)
    # A worker claims the row and dies before sending anything.
    claimed = store.run_sync(
        outbox_repo.claim_due, now=T0, lease_owner="crashed", lease_seconds=300, limit=10
    )
    assert [r.id for r in claimed] == [outbox_id]
    clock = FakeClock(T0 + timedelta(seconds=10))
    background = workers(clock, [], worker_id="survivor")
    async with background:
        # While the lease holds, the survivor must not take the row.
        await asyncio.sleep(0.2)
        assert row(store, outbox_id).lease_owner == "crashed"
        clock.advance(seconds=300)
        background.runnable.notify()
        await sink.wait_for_messages(1)
        await eventually(lambda: row(store, outbox_id).status == "sent")
    done = row(store, outbox_id)
    assert done.attempts == 2
    assert len(sink.messages) == 1
    # The crashed worker, should it come back, cannot overwrite the new outcome.
    assert not store.run_sync(outbox_repo.mark_retry, outbox_id, "late", T0, lease_owner="crashed")
    assert row(store, outbox_id).status == "sent"


async def test_sender_treats_missing_relay_credentials_as_temporary() -> None:
    async with SmtpSink(users={"gw": "pw"}) as auth_sink:
        sender = RelaySender(RelayOptions(host="127.0.0.1", port=auth_sink.port))
        try:
            result = await sender.send("alice@example.org", ["dave@example.net"], mail())
        finally:
            await sender.aclose()
    # 530 at MAIL is about our session, not the message: fixing the config must help.
    assert result.status == "temporary"
    assert result.code == 530
    assert auth_sink.messages == []


async def test_stopping_lets_a_send_in_flight_finish_and_be_recorded(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    sink.hold()
    outbox_id = enqueue(store)
    background = workers(FakeClock())
    stopping = await background.__aenter__()
    await sink.wait_for_held(1)
    stopping.set()  # shutdown requested while the relay has not answered yet
    sink.release()
    await background.__aexit__(None, None, None)
    assert row(store, outbox_id).status == "sent"
    assert len(sink.messages) == 1


async def test_worker_survives_a_database_outage_and_still_stops_cleanly(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    background = workers(FakeClock())
    async with background:
        await store.aclose()  # every claim now fails
        await asyncio.sleep(0.2)  # several poll rounds
        assert background.task is not None
        assert not background.task.done()


async def test_gateway_mail_uses_our_envelope_sender_and_forwarded_mail_keeps_its_own(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    # Our own iTIP mail bounces back to the gateway (mapped to the attendee, RFC 3464);
    # a message relayed unchanged for a local organiser bounces to that organiser.
    clock = FakeClock()
    enqueue(store, 1)
    store.run_sync(
        outbox_repo.enqueue,
        owner="alice@example.org",
        sender="alice@example.org",
        recipient="erin@example.net",
        method="FORWARD",
        uid="",
        payload=mail(2, "erin@example.net"),
        message_id="<out2@example.org>",
        now=T0,
    )
    async with workers(clock, envelope_from="bounces@gw.example"):
        received = await sink.wait_for_messages(2)
    senders = {m.rcpt_tos[0]: m.mail_from for m in received}
    assert senders == {
        "dave@example.net": "bounces@gw.example",
        "erin@example.net": "alice@example.org",
    }


async def test_due_rows_are_claimed_in_one_batch_and_each_is_marked_sent_once(
    store: Store,
    sink: SmtpSink,
    workers: Callable[..., RunningInBackground],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 5: one claim transaction leases up to ``claim_batch`` rows, more than the
    free connections; they wait in memory and go out one by one, each marked once."""
    claims: list[tuple[int, int]] = []
    marks: list[int] = []
    real_claim, real_marks = outbox_repo.claim_due, outbox_repo.mark_sent_many

    def spy_claim(s: Any, **kw: Any) -> list[outbox_repo.OutboxMessage]:
        got = real_claim(s, **kw)
        claims.append((kw["limit"], len(got)))
        return got

    def spy_marks(s: Any, ids: list[int], now: datetime, **kw: Any) -> list[int]:
        marks.extend(ids)
        return real_marks(s, ids, now, **kw)

    monkeypatch.setattr(outbox_repo, "claim_due", spy_claim)
    monkeypatch.setattr(outbox_repo, "mark_sent_many", spy_marks)
    ids = [enqueue(store, n) for n in range(12)]
    async with workers(FakeClock(), [], max_connections=1, claim_batch=16):
        await sink.wait_for_messages(12)
        await eventually(lambda: all(row(store, i).status == "sent" for i in ids))
    assert claims[0] == (16, 12)  # every due row leased by the first claim
    assert sorted(marks) == sorted(ids)  # each marked exactly once
    assert {row(store, i).attempts for i in ids} == {1}
    assert sorted(m.data for m in sink.messages) == sorted(mail(n) for n in range(12))


async def test_stopping_gives_back_claimed_rows_that_never_reached_the_relay(
    store: Store, sink: SmtpSink, workers: Callable[..., RunningInBackground]
) -> None:
    """Rows waiting in memory for a connection at shutdown are released: due at once
    for the next worker, their claim not counted as an attempt, nothing sent twice."""
    sink.hold()
    ids = [enqueue(store, n) for n in range(5)]
    background = workers(FakeClock(), [], max_connections=1, claim_batch=16)
    stopping = await background.__aenter__()
    await sink.wait_for_held(1)
    assert {row(store, i).status for i in ids} == {"sending"}  # all five leased
    stopping.set()
    sink.release()
    await background.__aexit__(None, None, None)
    statuses = sorted((row(store, i).status, row(store, i).attempts) for i in ids)
    assert statuses == [("pending", 0)] * 4 + [("sent", 1)]
    assert all(row(store, i).lease_owner is None for i in ids)
    assert len(sink.messages) == 1
    # The next worker sends the four, each once.
    async with workers(FakeClock(), [], max_connections=1):
        await sink.wait_for_messages(5)
        await eventually(lambda: all(row(store, i).status == "sent" for i in ids))
    assert sorted(m.data for m in sink.messages) == sorted(mail(n) for n in range(5))


async def test_a_claimed_row_left_waiting_for_half_its_lease_is_released_not_sent(
    store: Store,
    sink: SmtpSink,
    workers: Callable[..., RunningInBackground],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow relay: rows queued behind it would be sent after their lease expired, when
    another worker may have claimed them too.  They are given back instead, re-claimed
    with a fresh lease, and every row still goes out exactly once."""
    released: list[int] = []
    real_release = outbox_repo.release

    def spy_release(s: Any, ids: list[int], **kw: Any) -> int:
        released.extend(ids)
        return real_release(s, ids, **kw)

    monkeypatch.setattr(outbox_repo, "release", spy_release)
    sink.hold()
    ids = [enqueue(store, n) for n in range(3)]
    background = workers(FakeClock(), [], max_connections=1, claim_batch=16, lease_seconds=0.2)
    async with background:
        await sink.wait_for_held(1)
        await asyncio.sleep(0.15)  # the two waiting rows are now past half their lease
        sink.release()
        await sink.wait_for_messages(3)
        await eventually(lambda: all(row(store, i).status == "sent" for i in ids))
    assert released  # at least one waiting row was given back rather than sent late
    assert set(released) <= set(ids[1:])
    assert sorted(m.data for m in sink.messages) == sorted(mail(n) for n in range(3))


async def test_every_scheduled_retry_wakes_the_worker_not_only_the_earliest(
    store: Store, sink: SmtpSink
) -> None:
    """Two rows refused together retry at different times (jitter): the worker must
    wake for each, not sleep until the next poll after the first (found by the
    two-gateway outage test; the poll here is an hour)."""
    sink.script_data("451 4.3.0 try later", "451 4.3.0 try later")
    ids = [enqueue(store, n, now=datetime.now(UTC)) for n in range(2)]
    jitter = iter([0.0, 1.0])  # delays of 0.2 s and 0.4 s
    sender = RelaySender(relay_options(sink, max_connections=2))
    worker = OutboxWorker(
        store,
        sender,
        lambda: datetime.now(UTC),
        OutboxOptions(poll_interval_seconds=3600, retry_initial_seconds=0.4),
        rng=lambda: next(jitter, 1.0),
    )
    try:
        async with RunningInBackground(worker):
            await sink.wait_for_attempts(2)
            await sink.wait_for_messages(2)
            await eventually(lambda: all(row(store, i).status == "sent" for i in ids))
    finally:
        await sender.aclose()
    assert {row(store, i).attempts for i in ids} == {2}
