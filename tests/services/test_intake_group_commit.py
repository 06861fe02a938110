"""Group commit at intake: overlapping accepts share one journal transaction.

Proven on real migrated SQLite and PostgreSQL databases, observing the real engine: which journal
INSERTs each COMMIT carried, and that every ``accept`` returned only after the commit
holding its row.  A message the database refuses (a trigger) fails alone while the
others of its group are committed; a database refusing everything fails every caller;
two copies of one message in the same group are still one row.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.orm import Session

from gateway.services.intake import JournalIntake
from gateway.services.ports import Accepted, Envelope, TemporaryFailure
from gateway.store import Store, migrate
from gateway.store import journal as journal_repo

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def message(n: int, sender: str = "carol@example.net") -> tuple[bytes, Envelope]:
    raw = (
        f"From: {sender}\r\nTo: alice@example.org\r\nMessage-ID: <m{n}@example.net>\r\n"
        f"Subject: {n}\r\n\r\nbody {n}\r\n"
    ).encode()
    return raw, Envelope(source="smtp", mail_from=sender, rcpt_tos=("alice@example.org",))


@dataclass
class Transactions:
    """What the engine really did: journal rows each COMMIT made durable, and the order
    of commits and of ``accept`` calls returning."""

    rows_per_commit: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    _rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def commit(self, conn: Connection) -> None:
        # Fired just before the COMMIT, inside the transaction: count what it holds.
        rows = conn.exec_driver_sql("SELECT count(*) FROM journal").scalar_one()
        with self._lock:
            if rows != self._rows:
                self.rows_per_commit.append(rows - self._rows)
                self.events.append("commit")
            self._rows = rows


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    migrate.upgrade(db_url)
    s = Store(db_url)
    try:
        yield s
    finally:
        s.close()


def refuse_inserts(store: Store, name: str, condition: str, error: str) -> None:
    """A trigger that makes the database itself refuse some journal INSERTs."""
    if store.backend == "sqlite":
        ddl = [
            f"CREATE TRIGGER {name} BEFORE INSERT ON journal WHEN {condition}"
            f" BEGIN SELECT RAISE(ABORT, '{error}'); END"
        ]
    else:
        ddl = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF {condition} THEN RAISE EXCEPTION '{error}'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON journal"
            f" FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]

    def create(s: Session) -> None:
        for statement in ddl:
            s.execute(text(statement))

    store.run_sync(create)


@pytest.fixture
def transactions(store: Store) -> Transactions:
    seen = Transactions()

    @event.listens_for(store.engine, "commit")
    def _commit(conn: Connection) -> None:
        seen.commit(conn)

    return seen


def stored_senders(store: Store) -> list[str]:
    return sorted(m.envelope_from or "" for m in store.read_sync(journal_repo.list_messages, 100))


async def accept_logged(
    intake: JournalIntake, n: int, seen: Transactions, sender: str = "carol@example.net"
) -> Accepted:
    raw, envelope = message(n, sender)
    accepted = await intake.accept(raw, envelope)
    seen.events.append(f"accepted {accepted.journal_id}")
    return accepted


async def test_concurrent_accepts_share_one_commit_and_each_returns_after_it(
    store: Store, transactions: Transactions
) -> None:
    woken: list[int] = []
    intake = JournalIntake(store, lambda: NOW, woken.append)
    results = await asyncio.gather(*(accept_logged(intake, n, transactions) for n in range(10)))
    assert transactions.rows_per_commit == [10]
    assert transactions.events[0] == "commit"  # no caller heard back before the commit
    assert len({r.journal_id for r in results}) == 10
    assert not any(r.duplicate for r in results)
    assert sorted(woken) == sorted(r.journal_id for r in results)
    assert len(store.read_sync(journal_repo.list_messages, 100)) == 10


async def test_a_lone_message_is_committed_at_once_in_its_own_transaction(
    store: Store, transactions: Transactions
) -> None:
    intake = JournalIntake(store, lambda: NOW)
    await accept_logged(intake, 1, transactions)
    await accept_logged(intake, 2, transactions)
    assert transactions.rows_per_commit == [1, 1]


async def test_messages_arriving_during_a_commit_share_the_next_one(
    store: Store, transactions: Transactions
) -> None:
    intake = JournalIntake(store, lambda: NOW)
    release = threading.Event()
    held = threading.Event()

    def hold_the_journal(s: Session) -> None:
        # SQLite: BEGIN IMMEDIATE took the write lock, and the store's one thread is
        # busy.  PostgreSQL: the first group's INSERT waits for this table lock.
        if store.backend == "postgresql":
            s.execute(text("LOCK TABLE journal IN EXCLUSIVE MODE"))
        held.set()
        release.wait(10)

    blocker = asyncio.ensure_future(store.run(hold_the_journal))
    assert await asyncio.to_thread(held.wait, 10)
    first = asyncio.ensure_future(accept_logged(intake, 0, transactions))
    for _ in range(5):
        await asyncio.sleep(0)  # the first message's group is formed and submitted
    later = [asyncio.ensure_future(accept_logged(intake, n, transactions)) for n in (1, 2, 3)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    await blocker
    await asyncio.gather(first, *later)
    assert transactions.rows_per_commit == [1, 3]


async def test_a_message_the_database_refuses_fails_alone_and_the_rest_are_durable(
    store: Store, transactions: Transactions
) -> None:
    refuse_inserts(store, "poison", "NEW.envelope_from = 'poison@example.net'", "refused")
    intake = JournalIntake(store, lambda: NOW)
    senders = ["a@example.net", "poison@example.net", "b@example.net", "c@example.net"]
    results = await asyncio.gather(
        *(accept_logged(intake, n, transactions, s) for n, s in enumerate(senders)),
        return_exceptions=True,
    )
    assert isinstance(results[1], TemporaryFailure)
    assert all(isinstance(results[i], Accepted) for i in (0, 2, 3))
    # The group's transaction rolled back; each good message was then committed alone.
    assert transactions.rows_per_commit == [1, 1, 1]
    assert stored_senders(store) == ["a@example.net", "b@example.net", "c@example.net"]
    # Every good caller heard back only after a commit.
    first_accept = next(i for i, e in enumerate(transactions.events) if e.startswith("accepted"))
    assert transactions.events[:first_accept] == ["commit"]


async def test_a_database_refusing_everything_fails_every_caller_of_the_group(
    store: Store, transactions: Transactions
) -> None:
    refuse_inserts(store, "refuse_all", "1 = 1", "disk full (test)")
    intake = JournalIntake(store, lambda: NOW)
    results = await asyncio.gather(
        *(accept_logged(intake, n, transactions) for n in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, TemporaryFailure) for r in results)
    assert transactions.rows_per_commit == []
    assert stored_senders(store) == []


async def test_two_copies_of_one_message_in_a_group_are_one_row_and_one_wake(
    store: Store, transactions: Transactions
) -> None:
    woken: list[int] = []
    intake = JournalIntake(store, lambda: NOW, woken.append)
    raw, envelope = message(7)
    first, second = await asyncio.gather(intake.accept(raw, envelope), intake.accept(raw, envelope))
    assert transactions.rows_per_commit == [1]
    assert first.journal_id == second.journal_id
    assert (first.duplicate, second.duplicate) == (False, True)
    assert woken == [first.journal_id]


async def test_group_size_is_bounded(store: Store, transactions: Transactions) -> None:
    intake = JournalIntake(store, lambda: NOW, max_group=4)
    await asyncio.gather(*(accept_logged(intake, n, transactions) for n in range(10)))
    assert transactions.rows_per_commit == [4, 4, 2]


async def test_a_caller_that_gives_up_does_not_cancel_the_others(
    store: Store, transactions: Transactions
) -> None:
    intake = JournalIntake(store, lambda: NOW)
    tasks = [asyncio.ensure_future(accept_logged(intake, n, transactions)) for n in range(3)]
    await asyncio.sleep(0)
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert all(isinstance(r, Accepted) for r in done[1:])
    # The abandoned message may still have been committed (a retry is a duplicate).
    assert len(stored_senders(store)) in (2, 3)
