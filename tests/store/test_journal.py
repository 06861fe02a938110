"""The inbound journal: duplicates, leases and crash recovery, outcomes."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from gateway.store import MAX_KEY_BYTES, Store, journal

RAW = b"From: a@x\r\nMessage-ID: <m1@x>\r\n\r\nbody\r\n"


def _record(
    s: Session, now: datetime, raw: bytes = RAW, message_id: str | None = "<m1@x>"
) -> tuple[int, bool]:
    row, dup = journal.record_inbound(
        s,
        raw,
        message_id=message_id,
        source="lmtp",
        envelope_from="MAILTO:A@X",
        envelope_to=["Bob@Example.ORG"],
        now=now,
    )
    return row.id, dup


def test_record_inbound_stores_bytes_hash_and_normalised_envelope(
    store: Store, now: datetime
) -> None:
    jid, dup = store.run_sync(_record, now)
    assert dup is False
    detail = store.read_sync(journal.get_message, jid)
    assert detail is not None
    msg = detail.message
    assert msg.raw == RAW
    assert msg.size == len(RAW)
    assert msg.sha256 == journal.sha256_hex(RAW)
    assert (msg.envelope_from, msg.envelope_to) == ("a@x", ["bob@example.org"])
    assert (msg.status, msg.attempts, msg.received_at) == ("pending", 0, now)


def test_same_bytes_and_message_id_is_a_duplicate(store: Store, now: datetime) -> None:
    first, _ = store.run_sync(_record, now)
    second, dup = store.run_sync(_record, now + timedelta(minutes=5))
    assert dup is True
    assert second == first
    assert len(store.read_sync(journal.list_messages)) == 1


def _record_for(s: Session, now: datetime, recipients: list[str]) -> tuple[int, bool, list[str]]:
    row, dup = journal.record_inbound(
        s,
        RAW,
        message_id="<m1@x>",
        source="imap",
        envelope_from="a@x",
        envelope_to=recipients,
        now=now,
    )
    return row.id, dup, list(row.envelope_to)


def test_same_message_for_another_recipient_gets_its_own_row(store: Store, now: datetime) -> None:
    # The same invitation delivered in a second transaction (LMTP, one recipient per
    # transaction) or to a second IMAP mailbox must be processed for that recipient too.
    first, _, _ = store.run_sync(_record_for, now, ["alice@example.org"])
    second, dup, rcpts = store.run_sync(_record_for, now, ["BOB@example.org"])
    assert (dup, rcpts) == (False, ["bob@example.org"])
    assert second != first
    # Each recipient's retry is then a duplicate of its own row.
    again, dup, _ = store.run_sync(_record_for, now, ["bob@example.org"])
    assert (again, dup) == (second, True)


def test_retry_with_more_recipients_journals_only_the_new_ones(store: Store, now: datetime) -> None:
    store.run_sync(_record_for, now, ["alice@example.org"])
    _, dup, rcpts = store.run_sync(_record_for, now, ["alice@example.org", "carol@example.org"])
    assert (dup, rcpts) == (False, ["carol@example.org"])
    _, dup, _ = store.run_sync(_record_for, now, ["carol@example.org", "alice@example.org"])
    assert dup is True
    assert len(store.read_sync(journal.list_messages)) == 2


def test_same_bytes_with_another_message_id_is_a_new_message(store: Store, now: datetime) -> None:
    store.run_sync(_record, now)
    _, dup = store.run_sync(_record, now, RAW, "<m2@x>")
    assert dup is False


def test_changed_bytes_with_the_same_message_id_is_a_new_message(
    store: Store, now: datetime
) -> None:
    store.run_sync(_record, now)
    _, dup = store.run_sync(_record, now, RAW + b"more", "<m1@x>")
    assert dup is False


def test_messages_without_message_id_are_deduplicated_by_hash(store: Store, now: datetime) -> None:
    store.run_sync(_record, now, RAW, None)
    _, dup = store.run_sync(_record, now, RAW, None)
    assert dup is True


def test_claim_pending_leases_rows_oldest_first(store: Store, now: datetime) -> None:
    a, _ = store.run_sync(_record, now, b"a", "<a@x>")
    b, _ = store.run_sync(_record, now + timedelta(seconds=1), b"b", "<b@x>")
    claimed = store.run_sync(journal.claim_pending, now=now, lease_seconds=60, limit=10)
    assert [r.id for r in claimed] == [a, b]
    assert all(r.status == "processing" and r.attempts == 1 for r in claimed)
    assert all(r.lease_until == now + timedelta(seconds=60) for r in claimed)
    # A live lease is not handed out twice.
    again = store.run_sync(
        journal.claim_pending, now=now + timedelta(seconds=59), lease_seconds=60, limit=10
    )
    assert again == []


def test_expired_processing_lease_is_reclaimed_after_a_crash(store: Store, now: datetime) -> None:
    jid, _ = store.run_sync(_record, now)
    store.run_sync(journal.claim_pending, now=now, lease_seconds=30, limit=10)
    # ... the worker dies here without calling finish() ...
    later = now + timedelta(seconds=31)
    reclaimed = store.run_sync(journal.claim_pending, now=later, lease_seconds=30, limit=10)
    assert [r.id for r in reclaimed] == [jid]
    assert reclaimed[0].attempts == 2
    assert reclaimed[0].lease_until == later + timedelta(seconds=30)


def test_finish_records_outcome_and_releases_the_row(store: Store, now: datetime) -> None:
    jid, _ = store.run_sync(_record, now)
    store.run_sync(journal.claim_pending, now=now, lease_seconds=30, limit=10)
    store.run_sync(journal.finish, jid, "done", outcome="applied", reason="REPLY applied", now=now)
    detail = store.read_sync(journal.get_message, jid)
    assert detail is not None
    msg = detail.message
    assert (msg.status, msg.outcome, msg.reason) == ("done", "applied", "REPLY applied")
    assert (msg.processed_at, msg.lease_until) == (now, None)
    # Finished rows are never claimed again, even long after.
    assert (
        store.run_sync(
            journal.claim_pending, now=now + timedelta(days=1), lease_seconds=30, limit=10
        )
        == []
    )


def test_outcomes_are_listed_with_their_message(store: Store, now: datetime) -> None:
    jid, _ = store.run_sync(_record, now)

    def add(s: Session) -> None:
        journal.add_outcome(
            s,
            jid,
            part_index=1,
            recipient="C@X",
            outcome="ignored-stale",
            reason="SEQUENCE 3 < 4",
            now=now,
            method="REQUEST",
            uid="u1",
        )
        journal.add_outcome(
            s,
            jid,
            part_index=0,
            recipient="b@x",
            outcome="applied",
            reason="",
            now=now,
            method="REPLY",
            component="VEVENT",
            uid="u1",
            recurrence_id="20261121T100000Z",
        )

    store.run_sync(add)
    detail = store.read_sync(journal.get_message, jid)
    assert detail is not None
    assert [(o.part_index, o.outcome, o.recipient) for o in detail.outcomes] == [
        (0, "applied", "b@x"),
        (1, "ignored-stale", "c@x"),
    ]
    assert store.read_sync(journal.get_message, jid + 1000) is None


def test_list_messages_is_newest_first_and_filters_by_status(store: Store, now: datetime) -> None:
    old, _ = store.run_sync(_record, now, b"old", "<old@x>")
    new, _ = store.run_sync(_record, now + timedelta(hours=1), b"new", "<new@x>")
    store.run_sync(
        journal.finish, old, "quarantined", outcome="quarantined-invalid", reason="bad", now=now
    )
    listed = store.read_sync(journal.list_messages)
    assert [m.id for m in listed] == [new, old]
    assert [m.id for m in store.read_sync(journal.list_messages, status="quarantined")] == [old]
    assert [m.id for m in store.read_sync(journal.list_messages, limit=1, offset=1)] == [old]
    assert listed[1].outcome == "quarantined-invalid"


def test_a_huge_message_id_is_clipped_not_refused(store: Store, now: datetime) -> None:
    """PostgreSQL cannot index a 10 kB value; journaling must still succeed."""
    huge = "<" + "x" * 10_000 + "@x>"
    jid, dup = store.run_sync(_record, now, RAW, huge)
    assert dup is False
    _, dup_again = store.run_sync(_record, now, RAW, huge)
    assert dup_again is True
    detail = store.read_sync(journal.get_message, jid)
    assert detail is not None
    assert detail.message.message_id is not None
    assert len(detail.message.message_id.encode()) <= MAX_KEY_BYTES
    assert huge.startswith(detail.message.message_id)


def test_outcome_for_a_huge_uid_is_still_recorded(store: Store, now: datetime) -> None:
    jid, _ = store.run_sync(_record, now)
    store.run_sync(
        lambda s: journal.add_outcome(
            s,
            jid,
            part_index=0,
            recipient="b@x",
            outcome="quarantined-invalid",
            reason="UID too long",
            now=now,
            uid="é" * 5000,
        )
    )
    detail = store.read_sync(journal.get_message, jid)
    assert detail is not None
    [outcome] = detail.outcomes
    assert outcome.uid is not None
    assert 0 < len(outcome.uid.encode()) <= MAX_KEY_BYTES
    assert set(outcome.uid) == {"é"}  # never cut inside a character


def test_concurrent_duplicate_deliveries_store_one_row(pg_store: Store, now: datetime) -> None:
    """Two replicas receiving the same MTA retry at once: one row, one duplicate."""
    import threading

    results: list[tuple[int, bool]] = []
    barrier = threading.Barrier(2)

    def deliver() -> None:
        def unit(s: Session) -> tuple[int, bool]:
            barrier.wait()
            return _record(s, now)

        results.append(pg_store.run_sync(unit))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(dup for _, dup in results) == [False, True]
    assert len({jid for jid, _ in results}) == 1
    assert len(pg_store.read_sync(journal.list_messages)) == 1


def test_concurrent_journal_claimers_get_disjoint_rows(pg_store: Store, now: datetime) -> None:
    ids = [pg_store.run_sync(_record, now, f"m{i}".encode(), f"<{i}@x>")[0] for i in range(4)]
    with Session(pg_store.engine) as first, Session(pg_store.engine) as second:
        first.begin()
        second.begin()
        a = {r.id for r in journal.claim_pending(first, now=now, lease_seconds=60, limit=2)}
        b = {r.id for r in journal.claim_pending(second, now=now, lease_seconds=60, limit=10)}
        first.commit()
        second.commit()
    assert len(a) == 2
    assert a.isdisjoint(b)
    assert a | b == set(ids)
