"""Busy periods: replacement per object and half-open overlap queries."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from gateway.store import Store, busy, objects

H = timedelta(hours=1)


def _object(s: Session, now: datetime, uid: str) -> int:
    return objects.upsert_object(s, "room@x", uid, now=now, component="VEVENT", role="attendee").id


def test_overlapping_uses_half_open_intervals(store: Store, now: datetime) -> None:
    oid = store.run_sync(_object, now, "u1")
    store.run_sync(busy.replace_periods, oid, "Room@X", [busy.BusyPeriod(now, now + H)])
    # Touching at either end is not an overlap (RFC 5545 periods are [start, end)).
    assert store.read_sync(busy.overlapping, "room@x", now + H, now + 2 * H) == []
    assert store.read_sync(busy.overlapping, "room@x", now - H, now) == []
    hits = store.read_sync(busy.overlapping, "room@x", now + H / 2, now + 2 * H)
    assert [(b.start_utc, b.end_utc, b.fbtype) for b in hits] == [(now, now + H, "BUSY")]
    # Enclosing and enclosed windows both overlap.
    assert len(store.read_sync(busy.overlapping, "room@x", now - H, now + 2 * H)) == 1
    assert len(store.read_sync(busy.overlapping, "room@x", now + H / 4, now + H / 2)) == 1


def test_overlapping_is_per_owner_and_can_exclude_an_object(store: Store, now: datetime) -> None:
    a = store.run_sync(_object, now, "a")
    b = store.run_sync(_object, now, "b")
    store.run_sync(busy.replace_periods, a, "room@x", [busy.BusyPeriod(now, now + H)])
    store.run_sync(
        busy.replace_periods,
        b,
        "room@x",
        [busy.BusyPeriod(now + H / 2, now + 2 * H, "BUSY-TENTATIVE")],
    )
    hits = store.read_sync(busy.overlapping, "room@x", now, now + 3 * H)
    assert [h.object_id for h in hits] == [a, b]
    assert [
        h.object_id for h in store.read_sync(busy.overlapping, "room@x", now, now + 3 * H, a)
    ] == [b]
    assert store.read_sync(busy.overlapping, "other@x", now, now + 3 * H) == []


def test_replace_periods_replaces_only_that_objects_periods(store: Store, now: datetime) -> None:
    a = store.run_sync(_object, now, "a")
    b = store.run_sync(_object, now, "b")
    store.run_sync(busy.replace_periods, b, "room@x", [busy.BusyPeriod(now + 5 * H, now + 6 * H)])
    store.run_sync(
        busy.replace_periods,
        a,
        "room@x",
        [busy.BusyPeriod(now + i * 24 * H, now + i * 24 * H + H) for i in range(3)],
    )
    assert (
        store.run_sync(
            busy.replace_periods, a, "room@x", [busy.BusyPeriod(now + 2 * H, now + 3 * H)]
        )
        == 1
    )
    hits = store.read_sync(busy.overlapping, "room@x", now - H, now + 100 * H)
    assert [(h.object_id, h.start_utc) for h in hits] == [(a, now + 2 * H), (b, now + 5 * H)]
    assert store.run_sync(busy.replace_periods, a, "room@x", []) == 0
    assert [
        h.object_id for h in store.read_sync(busy.overlapping, "room@x", now - H, now + 100 * H)
    ] == [b]


def test_empty_or_inverted_periods_are_refused(now: datetime) -> None:
    with pytest.raises(ValueError, match="before it starts"):
        busy.BusyPeriod(now, now)
