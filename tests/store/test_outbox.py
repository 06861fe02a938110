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


def test_claimed_rows_are_returned_oldest_due_first_with_their_payload(
    store: Store, now: datetime
) -> None:
    """A claim returns detached snapshots of the leased rows, in the order they were due."""
    late = store.run_sync(_enqueue, now, next_attempt_at=now - timedelta(minutes=1))
    early = store.run_sync(_enqueue, now, next_attempt_at=now - timedelta(minutes=5))
    same_time = store.run_sync(_enqueue, now, 2, next_attempt_at=now - timedelta(minutes=3))
    claimed = store.run_sync(outbox.claim_due, now=now, lease_owner="w", lease_seconds=60, limit=10)
    assert [r.id for r in claimed] == [*early, *sorted(same_time), *late]
    first = claimed[0]
    assert isinstance(first, outbox.OutboxMessage)
    assert (first.payload, first.method, first.recipient) == (
        b"Subject: hi\r\n\r\n",
        "REQUEST",
        "r0@y",
    )
    assert (first.status, first.attempts, first.lease_owner) == ("sending", 1, "w")
    assert first.created_at == now
    assert first.sent_at is None


def test_claim_and_conclusion_refresh_rows_the_session_already_holds(
    store: Store, now: datetime
) -> None:
    [oid] = store.run_sync(_enqueue, now)

    def run(s: Session) -> list[tuple[str, int]]:
        seen = []
        row = outbox.get(s, oid)  # an ORM copy held through the Core writes
        assert row is not None
        outbox.claim_due(s, now=now, lease_owner="w", lease_seconds=60, limit=1)
        seen.append((row.status, row.attempts))
        outbox.mark_retry(s, oid, "4.0.0 busy", now + timedelta(minutes=1), lease_owner="w")
        seen.append((row.status, row.attempts))
        return seen

    assert store.run_sync(run) == [("sending", 1), ("pending", 1)]
    row = store.read_sync(outbox.get, oid)
    assert row is not None
    assert (row.last_error, row.next_attempt_at) == ("4.0.0 busy", now + timedelta(minutes=1))


def test_conclusions_without_a_lease_holder_apply_to_any_row(store: Store, now: datetime) -> None:
    a, b = store.run_sync(_enqueue, now, 2)
    assert store.run_sync(outbox.mark_failed, a, "5.1.1 unknown", now) is True
    assert store.run_sync(outbox.mark_sent, b, now) is True
    assert store.run_sync(outbox.mark_sent, 999_999, now) is False
    failed, sent = store.read_sync(outbox.get, a), store.read_sync(outbox.get, b)
    assert failed is not None
    assert sent is not None
    assert (failed.status, failed.last_error) == ("failed", "5.1.1 unknown")
    assert (sent.status, sent.sent_at) == ("sent", now)


def test_mark_sent_many_marks_held_rows_and_names_the_ones_whose_lease_was_lost(
    store: Store, now: datetime
) -> None:
    ids = store.run_sync(_enqueue, now, n=3)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w1", lease_seconds=60, limit=10)
    # The last row went back to the queue and another worker claimed it.
    later = now + timedelta(seconds=5)
    store.run_sync(outbox.release, ids[2:], lease_owner="w1")
    store.run_sync(outbox.claim_due, now=now, lease_owner="w2", lease_seconds=60, limit=10)
    lost = store.run_sync(outbox.mark_sent_many, ids, later, lease_owner="w1")
    assert lost == ids[2:]
    rows = [store.read_sync(outbox.get, i) for i in ids]
    assert [(r.status, r.sent_at, r.lease_owner) for r in rows if r] == [
        ("sent", later, None),
        ("sent", later, None),
        ("sending", None, "w2"),  # the new holder's bookkeeping is untouched
    ]


def test_release_gives_back_only_our_unsent_rows_without_counting_an_attempt(
    store: Store, now: datetime
) -> None:
    ids = store.run_sync(_enqueue, now, n=3)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w1", lease_seconds=60, limit=2)
    store.run_sync(outbox.claim_due, now=now, lease_owner="w2", lease_seconds=60, limit=2)
    assert store.run_sync(outbox.release, ids, lease_owner="w1") == 2
    rows = [store.read_sync(outbox.get, i) for i in ids]
    assert [(r.status, r.attempts, r.lease_owner) for r in rows if r] == [
        ("pending", 0, None),
        ("pending", 0, None),
        ("sending", 1, "w2"),
    ]
    # Released rows are due again at once for any worker.
    again = store.run_sync(outbox.claim_due, now=now, lease_owner="w3", lease_seconds=60, limit=10)
    assert sorted(r.id for r in again) == ids[:2]
