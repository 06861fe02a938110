"""The outbox: due rows, leases, retries and concurrent claimers."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from gateway.store import Store, outbox


def _enqueue(s: Session, /, now: datetime, n: int = 1, **kw: object) -> list[int]:
    return [
        outbox.enqueue(
            s,
            owner="Org@X",
            sender="org@x",
            recipient=f"R{i}@Y",
            method="request",
            uid="u1",
            payload=b"Subject: hi\r\n\r\n",
            message_id=f"<{i}@x>",
            now=now,
            **kw,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


def test_enqueue_normalises_and_is_due_immediately(store: Store, now: datetime) -> None:
    [oid] = store.run_sync(_enqueue, now)
    row = store.read_sync(outbox.get, oid)
    assert row is not None
    assert (row.owner, row.recipient, row.method) == ("org@x", "r0@y", "REQUEST")
    assert (row.status, row.attempts, row.next_attempt_at) == ("pending", 0, now)


def test_claim_due_takes_only_due_rows_and_leases_them(store: Store, now: datetime) -> None:
    [due] = store.run_sync(_enqueue, now)
    store.run_sync(_enqueue, now, next_attempt_at=now + timedelta(minutes=5))
    claimed = store.run_sync(
        outbox.claim_due, now=now, lease_owner="w1", lease_seconds=120, limit=10
    )
    assert [r.id for r in claimed] == [due]
    row = claimed[0]
    assert (row.status, row.lease_owner, row.attempts) == ("sending", "w1", 1)
    assert row.lease_until == now + timedelta(seconds=120)
    # Leased rows are not claimable while the lease lives.
    assert (
        store.run_sync(
            outbox.claim_due,
            now=now + timedelta(seconds=60),
            lease_owner="w2",
            lease_seconds=120,
            limit=10,
        )
        == []
    )


def test_expired_sending_lease_is_reclaimed_by_another_worker(store: Store, now: datetime) -> None:
    [oid] = store.run_sync(_enqueue, now)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w1", lease_seconds=60, limit=10)
    later = now + timedelta(seconds=61)
    [row] = store.run_sync(
        outbox.claim_due, now=later, lease_owner="w2", lease_seconds=60, limit=10
    )
    assert (row.id, row.lease_owner, row.attempts) == (oid, "w2", 2)
    # The crashed worker's late conclusion is refused; the new holder's is accepted.
    assert store.run_sync(outbox.mark_sent, oid, later, lease_owner="w1") is False
    assert store.run_sync(outbox.mark_sent, oid, later, lease_owner="w2") is True
    sent = store.read_sync(outbox.get, oid)
    assert sent is not None
    assert (sent.status, sent.sent_at, sent.lease_owner, sent.lease_until) == (
        "sent",
        later,
        None,
        None,
    )


def test_retry_bookkeeping_keeps_error_and_schedules_next_attempt(
    store: Store, now: datetime
) -> None:
    [oid] = store.run_sync(_enqueue, now)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w", lease_seconds=60, limit=1)
    delay = outbox.backoff_delay(1, base_seconds=60, jitter=0.0)
    assert store.run_sync(outbox.mark_retry, oid, "451 try later", now + delay, lease_owner="w")
    row = store.read_sync(outbox.get, oid)
    assert row is not None
    assert (row.status, row.last_error, row.attempts) == ("pending", "451 try later", 1)
    assert row.next_attempt_at == now + timedelta(seconds=30)
    assert row.lease_owner is None
    # Not due before the backoff ends, due at its end.
    assert (
        store.run_sync(
            outbox.claim_due,
            now=now + timedelta(seconds=29),
            lease_owner="w",
            lease_seconds=60,
            limit=1,
        )
        == []
    )
    [again] = store.run_sync(
        outbox.claim_due, now=now + delay, lease_owner="w", lease_seconds=60, limit=1
    )
    assert again.attempts == 2


def test_failed_rows_stay_failed_until_retry_now(store: Store, now: datetime) -> None:
    ids = store.run_sync(_enqueue, now, 3)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w", lease_seconds=60, limit=3)
    for oid in ids[:2]:
        store.run_sync(outbox.mark_failed, oid, "550 no such user", now)
    later = now + timedelta(days=1)
    # Failed rows are never claimed, however late; only the expired lease of ids[2] is.
    reclaimed = store.run_sync(
        outbox.claim_due, now=later, lease_owner="w", lease_seconds=60, limit=10
    )
    assert [r.id for r in reclaimed] == [ids[2]]
    assert {r.id for r in store.read_sync(outbox.list_outbox, "failed")} == set(ids[:2])
    assert store.run_sync(outbox.retry_now, [ids[0]], now=later) == 1
    assert store.run_sync(outbox.retry_now, now=later, all_failed=True) == 1
    assert store.read_sync(outbox.list_outbox, "failed") == []
    row = store.read_sync(outbox.get, ids[0])
    assert row is not None
    assert (row.status, row.next_attempt_at, row.last_error) == (
        "pending",
        later,
        "550 no such user",
    )


def test_retry_now_needs_exactly_one_selector(store: Store, now: datetime) -> None:
    with pytest.raises(ValueError, match="either"):
        store.run_sync(outbox.retry_now, now=now)
    with pytest.raises(ValueError, match="either"):
        store.run_sync(outbox.retry_now, [1], now=now, all_failed=True)


def test_purge_deletes_only_old_rows_of_the_given_statuses(store: Store, now: datetime) -> None:
    old_sent, old_pending = store.run_sync(_enqueue, now, 2)
    store.run_sync(outbox.mark_sent, old_sent, now)
    [new_sent] = store.run_sync(_enqueue, now + timedelta(days=10))
    store.run_sync(outbox.mark_sent, new_sent, now + timedelta(days=10))
    assert store.run_sync(outbox.purge, now + timedelta(days=5)) == 1
    remaining = {r.id for r in store.read_sync(outbox.list_outbox)}
    assert remaining == {old_pending, new_sent}


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    delays = [
        outbox.backoff_delay(n, base_seconds=60, jitter=1.0).total_seconds() for n in (1, 2, 3)
    ]
    assert delays == [60, 120, 240]
    assert outbox.backoff_delay(3, base_seconds=60, jitter=0.0).total_seconds() == 120
    assert (
        outbox.backoff_delay(50, base_seconds=60, cap_seconds=3600, jitter=1.0).total_seconds()
        == 3600
    )
    with pytest.raises(ValueError, match="jitter"):
        outbox.backoff_delay(1, jitter=1.5)


def test_concurrent_claimers_never_get_the_same_row(pg_store: Store, now: datetime) -> None:
    """Two workers with open transactions claim disjoint rows (FOR UPDATE SKIP LOCKED)."""
    store = pg_store
    ids = store.run_sync(_enqueue, now, 5)
    with Session(store.engine) as first, Session(store.engine) as second:
        first.begin()
        second.begin()
        a = outbox.claim_due(first, now=now, lease_owner="a", lease_seconds=60, limit=3)
        # `first` has not committed: its rows are locked, and `second` skips them.
        b = outbox.claim_due(second, now=now, lease_owner="b", lease_seconds=60, limit=10)
        got_a, got_b = {r.id for r in a}, {r.id for r in b}
        first.commit()
        second.commit()
    assert len(got_a) == 3
    assert got_a.isdisjoint(got_b)
    assert got_a | got_b == set(ids)


def test_many_concurrent_claimers_partition_the_rows(pg_store: Store, now: datetime) -> None:
    """Real threads, committing claims concurrently: every row is claimed exactly once."""
    store = pg_store
    import threading

    ids = store.run_sync(_enqueue, now, 40)
    results: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        mine: list[int] = []
        while True:
            rows = store.run_sync(
                outbox.claim_due, now=now, lease_owner=name, lease_seconds=600, limit=3
            )
            if not rows:
                break
            mine += [r.id for r in rows]
        results[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [oid for rows in results.values() for oid in rows]
    assert sorted(claimed) == sorted(ids)  # none twice, none missed
