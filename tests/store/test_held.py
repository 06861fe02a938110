"""Held items: early CANCEL/REPLY, COUNTER proposals and other messages awaiting a decision."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from gateway.store import FieldTooLongError, Store, held

BIG_SEQUENCE = 1407317367304


def _hold(s: Session, now: datetime, uid: str = "u1", kind: held.HeldKind = "early-cancel") -> int:
    return held.hold(
        s,
        owner="MAILTO:Owner@X",
        uid=uid,
        kind=kind,
        sender="Org@Y",
        method="cancel",
        payload="BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        sequence=BIG_SEQUENCE,
        dtstamp=now,
        now=now,
    ).id


def test_pending_for_returns_unresolved_items_in_arrival_order(store: Store, now: datetime) -> None:
    first = store.run_sync(_hold, now)
    second = store.run_sync(_hold, now + timedelta(seconds=1), "u1", "early-reply")
    store.run_sync(_hold, now, "other-uid")
    pending = store.read_sync(held.pending_for, "owner@x", "u1")
    assert [h.id for h in pending] == [first, second]
    assert (pending[0].owner, pending[0].sender, pending[0].method) == (
        "owner@x",
        "org@y",
        "CANCEL",
    )
    assert pending[0].sequence == BIG_SEQUENCE


def test_resolve_closes_an_item_once(store: Store, now: datetime) -> None:
    hid = store.run_sync(_hold, now)
    assert store.run_sync(held.resolve, hid, "applied", now) is True
    assert store.run_sync(held.resolve, hid, "discarded", now) is False
    assert store.read_sync(held.pending_for, "owner@x", "u1") == []
    item = store.read_sync(held.get, hid)
    assert item is not None
    assert (item.resolution, item.resolved_at) == ("applied", now)
    assert store.run_sync(held.resolve, hid + 100, "applied", now) is False


def test_list_held_filters_by_owner_and_resolution(store: Store, now: datetime) -> None:
    a = store.run_sync(_hold, now, "u1", "counter")
    b = store.run_sync(_hold, now, "u2", "party-crasher")
    store.run_sync(held.resolve, b, "discarded", now)
    assert [h.id for h in store.read_sync(held.list_held)] == [a]
    assert [h.id for h in store.read_sync(held.list_held, "Owner@X", include_resolved=True)] == [
        a,
        b,
    ]
    assert store.read_sync(held.list_held, "nobody@x") == []


def test_holding_an_overlong_uid_is_refused(store: Store, now: datetime) -> None:
    with pytest.raises(FieldTooLongError, match="UID"):
        store.run_sync(_hold, now, "u" * 5000)
    assert store.read_sync(held.list_held) == []


def test_resolving_refreshes_a_copy_the_session_holds(store: Store, now: datetime) -> None:
    hid = store.run_sync(_hold, now)

    def run(s: Session) -> tuple[str | None, object]:
        item = held.get(s, hid)  # an ORM copy held through the Core UPDATE
        assert item is not None
        assert item.resolution is None
        assert held.resolve(s, hid, "applied", now) is True
        return item.resolution, item.resolved_at

    assert store.run_sync(run) == ("applied", now)


def test_hold_returns_what_was_stored(store: Store, now: datetime) -> None:
    row = store.run_sync(
        lambda s: held.hold(
            s,
            owner="Owner@X",
            uid="u9",
            kind="counter",
            sender="Bob@Y",
            method="counter",
            payload="BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
            now=now,
        )
    )
    stored = store.read_sync(held.get, row.id)
    assert stored is not None
    assert (row.owner, row.sender, row.method, row.resolved_at) == (
        "owner@x",
        "bob@y",
        "COUNTER",
        None,
    )
    assert (stored.owner, stored.sender, stored.method, stored.kind, stored.created_at) == (
        row.owner,
        row.sender,
        row.method,
        "counter",
        now,
    )
