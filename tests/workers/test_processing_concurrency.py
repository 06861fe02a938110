"""Several journal drain loops at once (``gateway.processing_concurrency``).

Concurrent loops in one process are what several replicas sharing one PostgreSQL do:
these tests run the real worker, processor and store against a throwaway PostgreSQL
server and check that nothing is processed twice or lost, that messages about one event
still end in the right state whichever loop takes them, and that a deadlock between two
transactions is retried instead of counted towards quarantine.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from gateway.config import Settings
from gateway.services import queries
from gateway.services.intake import message_id_of
from gateway.services.runtime import GatewayServices
from gateway.store import journal, objects
from gateway.store.tx import is_transient_error
from gateway.workers.processing import ProcessingWorker
from tests.services.helpers import (
    ATTENDEE,
    ORGANIZER,
    imip_mail,
    open_services,
    outbox_rows,
    vevent,
)

# Generous bound on a test's processing, so a bug shows as a failure instead of a hang
# (never a performance assertion: the work takes well under a second normally).
DEADLINE_SECONDS = 60.0


@pytest.fixture
def pg_services(fresh_postgres_url: str) -> Iterator[GatewayServices]:
    with open_services(fresh_postgres_url) as svc:
        yield svc


def _journal(svc: GatewayServices, raw: bytes, *, sender: str, to: list[str], source: str) -> int:
    row, duplicate = svc.store.run_sync(
        journal.record_inbound,
        raw,
        message_id=message_id_of(raw),
        source=source,  # type: ignore[arg-type]
        envelope_from=sender,
        envelope_to=to,
        now=svc.clock(),
    )
    assert not duplicate
    return int(row.id)


def _messages(svc: GatewayServices) -> list[dict[str, object]]:
    return svc.store.read_sync(queries.message_list, 10_000)


def _unfinished(svc: GatewayServices) -> int:
    return sum(1 for m in _messages(svc) if m["status"] not in ("done", "quarantined"))


async def _run_until_drained(svc: GatewayServices, worker: ProcessingWorker) -> None:
    """Run the worker until every journal row is finished, then stop it cleanly."""
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    try:
        while await asyncio.to_thread(_unfinished, svc):
            assert loop.time() < deadline, "journal not drained"
            assert not task.done(), "worker stopped on its own"
            await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)


def _worker(svc: GatewayServices, *, batch: int, concurrency: int = 4) -> ProcessingWorker:
    return ProcessingWorker(
        svc.store,
        svc.processor,
        svc.clock,
        batch=batch,
        poll_seconds=0.2,
        concurrency=concurrency,
    )


def _remote_request(uid: str, organizer: str) -> bytes:
    cal = vevent(uid=uid, organizer=organizer, attendees=((ATTENDEE, "NEEDS-ACTION"),))
    return imip_mail(cal, sender=organizer, to=ATTENDEE)


# --------------------------------------------------------------------------- exactly once


@pytest.mark.postgres
async def test_four_loops_process_many_events_each_exactly_once(
    pg_services: GatewayServices,
) -> None:
    svc = pg_services
    # 8 remote organisers (8 rate-limit rows shared between the loops), 6 events each,
    # interleaved so every batch touches several organisers' rows.
    organizers = [f"org{n}@remote.example" for n in range(8)]
    uids = {}
    for i in range(48):
        organizer = organizers[i % len(organizers)]
        uid = f"many-{i}@remote.example"
        _journal(
            svc, _remote_request(uid, organizer), sender=organizer, to=[ATTENDEE], source="smtp"
        )
        uids[uid] = organizer

    await _run_until_drained(svc, _worker(svc, batch=4))

    messages = _messages(svc)
    assert len(messages) == 48
    assert {m["status"] for m in messages} == {"done"}
    # One claim each: no row was processed twice or retried as a failure.
    assert {m["attempts"] for m in messages} == {1}
    replies = [r for r in outbox_rows(svc) if r["method"] == "REPLY"]
    assert Counter(str(r["uid"]) for r in replies) == Counter(dict.fromkeys(uids, 1))
    assert {str(r["uid"]): str(r["recipient"]) for r in replies} == uids
    for uid in uids:
        (event,) = svc.store.read_sync(queries.event_detail, uid, ATTENDEE)
        bob = next(a for a in event["instances"][0]["attendees"] if a["address"] == ATTENDEE)
        assert bob["partstat"] == "ACCEPTED"


# ------------------------------------------------------------------ one event, two loops


@pytest.mark.postgres
async def test_request_and_reply_for_one_uid_in_different_loops_end_accepted(
    pg_services: GatewayServices,
) -> None:
    svc = pg_services
    pairs = 12
    for k in range(pairs):
        uid = f"pair-{k}@example.org"
        attendee = f"carol{k}@remote.example"
        # The organiser's submission (alice is local) queues the REQUEST to carol ...
        request = vevent(uid=uid, attendees=((attendee, "NEEDS-ACTION"),)).encode()
        # ... and carol's REPLY; half of them journaled before the submission, so that
        # either order reaches the loops (RFC 5546 section 5.2: mail is not ordered).
        reply = imip_mail(
            vevent(method="REPLY", uid=uid, attendees=((attendee, "ACCEPTED"),)),
            sender=attendee,
            to=ORGANIZER,
            method="REPLY",
        )

        def submit(request: bytes = request) -> None:
            _journal(svc, request, sender="", to=[], source="send")

        def answer(reply: bytes = reply, attendee: str = attendee) -> None:
            _journal(svc, reply, sender=attendee, to=[ORGANIZER], source="smtp")

        first, second = (answer, submit) if k % 2 == 0 else (submit, answer)
        first()
        second()

    # One message per batch: the two messages of a pair are in different loops.
    await _run_until_drained(svc, _worker(svc, batch=1))

    assert {m["status"] for m in _messages(svc)} == {"done"}
    requests = Counter(
        (str(r["uid"]), str(r["recipient"])) for r in outbox_rows(svc) if r["method"] == "REQUEST"
    )
    assert requests == Counter(
        {(f"pair-{k}@example.org", f"carol{k}@remote.example"): 1 for k in range(pairs)}
    )
    for k in range(pairs):
        (event,) = svc.store.read_sync(queries.event_detail, f"pair-{k}@example.org", ORGANIZER)
        who = {a["address"]: a["partstat"] for a in event["instances"][0]["attendees"]}
        assert who[f"carol{k}@remote.example"] == "ACCEPTED"
        # An early REPLY was held and then replayed by its REQUEST: nothing left waiting.
        assert event["held"] == []


# ---------------------------------------------------------------------------- deadlocks


def _psycopg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.mark.postgres
async def test_deadlocked_message_is_retried_and_not_counted_as_an_attempt(
    pg_services: GatewayServices, fresh_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    svc = pg_services
    uid = "deadlock@remote.example"
    organizer = "olga@remote.example"
    jid = _journal(
        svc, _remote_request(uid, organizer), sender=organizer, to=[ATTENDEE], source="smtp"
    )
    conninfo = _psycopg_conninfo(fresh_postgres_url)
    rival = psycopg.connect(conninfo)
    watcher = psycopg.connect(conninfo, autocommit=True)
    try:
        # The rival takes the event's (owner, UID) lock first.  Its own deadlock check
        # comes late, so PostgreSQL picks the worker's transaction as the victim.
        rival.execute("SET deadlock_timeout = '30s'")
        rival.execute("SELECT pg_advisory_xact_lock(%s)", (objects.lock_key(ATTENDEE, uid),))

        caplog.set_level(logging.WARNING, logger="gateway.services.processor")
        stopping = asyncio.Event()
        worker = _worker(svc, batch=4, concurrency=2)
        task = asyncio.create_task(worker.run(stopping))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_SECONDS
        # The worker holds the journal row's lock and waits for the event lock ...
        waiting_for_event_lock = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'advisory'"
        )
        while watcher.execute(waiting_for_event_lock).fetchone() != (1,):
            assert loop.time() < deadline, "the worker never waited for the event lock"
            await asyncio.sleep(0.02)

        # ... and the rival now wants the journal row: opposite order, a deadlock.
        def rival_locks_the_journal_row() -> None:
            rival.execute("SELECT id FROM journal WHERE id = %s FOR UPDATE", (jid,))
            rival.commit()

        await asyncio.wait_for(asyncio.to_thread(rival_locks_the_journal_row), DEADLINE_SECONDS)
        try:
            while await asyncio.to_thread(_unfinished, svc):
                assert loop.time() < deadline, "the deadlocked message was not retried"
                await asyncio.sleep(0.05)
        finally:
            stopping.set()
            await asyncio.wait_for(task, DEADLINE_SECONDS)
    finally:
        rival.close()
        watcher.close()

    # The deadlock really happened, in the worker's transaction ...
    assert any("transient failure, retrying" in r.getMessage() for r in caplog.records)
    # ... and cost nothing: done after its one claim, its one REPLY queued once.
    (message,) = _messages(svc)
    assert message["status"] == "done"
    assert message["attempts"] == 1
    replies = [r for r in outbox_rows(svc) if r["method"] == "REPLY"]
    assert [(r["uid"], r["recipient"]) for r in replies] == [(uid, organizer)]


@pytest.mark.postgres
def test_deadlock_error_from_postgresql_is_recognised_as_transient(
    fresh_postgres_url: str,
) -> None:
    conninfo = _psycopg_conninfo(fresh_postgres_url)
    with psycopg.connect(conninfo) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$")
    assert is_transient_error(caught.value)
    with psycopg.connect(conninfo) as conn, pytest.raises(psycopg.Error) as other:
        conn.execute("SELECT 1/0")
    assert not is_transient_error(other.value)


# ------------------------------------------------------------------------------ wake-ups


@pytest.mark.postgres
async def test_notify_wakes_an_idle_loop_without_waiting_for_the_poll(
    pg_services: GatewayServices,
) -> None:
    svc = pg_services
    # A poll far longer than the test deadline: only the wake-up can get the row done.
    worker = ProcessingWorker(svc.store, svc.processor, svc.clock, poll_seconds=3600, concurrency=4)
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    try:
        for n in range(3):
            uid = f"wake-{n}@remote.example"
            raw = _remote_request(uid, "olga@remote.example")
            await asyncio.to_thread(
                _journal, svc, raw, sender="olga@remote.example", to=[ATTENDEE], source="smtp"
            )
            worker.notify()
            while await asyncio.to_thread(_unfinished, svc):
                assert loop.time() < deadline, "a journaled message waited for the poll"
                await asyncio.sleep(0.05)
    finally:
        stopping.set()
        await asyncio.wait_for(task, DEADLINE_SECONDS)
    assert worker.processed == 3


# --------------------------------------------------------------------------- the setting


def test_concurrency_defaults_to_one_on_sqlite_and_is_pool_bounded_on_postgresql() -> None:
    assert Settings().gateway.processing_concurrency == 1
    pg = "postgresql+psycopg://gw@db.example/gw"
    assert Settings(database={"url": pg}).gateway.processing_concurrency == 3
    assert Settings(database={"url": pg, "pool_size": 20}).gateway.processing_concurrency == 4
    assert Settings(database={"url": pg, "pool_size": 1}).gateway.processing_concurrency == 1
    explicit = Settings(gateway={"processing_concurrency": 6}, database={"url": pg, "pool_size": 8})
    assert explicit.gateway.processing_concurrency == 6


def test_explicit_concurrency_on_sqlite_is_kept_and_needs_no_pool() -> None:
    # SQLite runs every unit of work on one store thread whatever the pool size: extra
    # loops only take turns, so they are allowed (harmless) but never the default.
    settings = Settings(gateway={"processing_concurrency": 3}, database={"pool_size": 1})
    assert settings.gateway.processing_concurrency == 3


def test_pool_smaller_than_concurrency_plus_reserve_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"database.pool_size = 5 is too small.*at least 6"):
        Settings(
            gateway={"processing_concurrency": 4},
            database={"url": "postgresql+psycopg://gw@db.example/gw", "pool_size": 5},
        )
