"""The async Store facade: one transaction per call, never on the event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.store import Store, outbox
from gateway.store.models import OutboxRow


def _enqueue(s: Session, now: datetime, uid: str) -> int:
    return outbox.enqueue(
        s,
        owner="o@x",
        sender="o@x",
        recipient="r@y",
        method="REPLY",
        uid=uid,
        payload=b"x",
        message_id=f"<{uid}@x>",
        now=now,
    )


def _count(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(OutboxRow)) or 0)


async def test_run_commits_on_return(store: Store, now: datetime) -> None:
    new_id = await store.run(_enqueue, now, "u1")
    assert isinstance(new_id, int)
    assert await store.read(_count) == 1


async def test_run_rolls_back_when_the_unit_of_work_raises(store: Store, now: datetime) -> None:
    class Boom(Exception):
        pass

    def enqueue_then_fail(s: Session) -> None:
        _enqueue(s, now, "u1")
        raise Boom

    with pytest.raises(Boom):
        await store.run(enqueue_then_fail)
    assert await store.read(_count) == 0


async def test_read_never_persists_writes(store: Store, now: datetime) -> None:
    await store.read(_enqueue, now, "u1")
    assert await store.read(_count) == 0


async def test_work_runs_off_the_event_loop_thread(store: Store) -> None:
    loop_thread = threading.get_ident()

    def where(_s: Session) -> tuple[int, str]:
        return threading.get_ident(), threading.current_thread().name

    ident, name = await store.run(where)
    assert ident != loop_thread
    assert name.startswith("store")
    ident, _ = await store.read(where)
    assert ident != loop_thread


async def test_concurrent_units_of_work_all_commit(store: Store, now: datetime) -> None:
    await asyncio.gather(*(store.run(_enqueue, now, f"u{i}") for i in range(20)))
    assert await store.read(_count) == 20


async def test_sqlite_store_uses_a_single_thread(store: Store) -> None:
    def name(_s: Session) -> str:
        return threading.current_thread().name

    names = set(await asyncio.gather(*(store.run(name) for _ in range(10))))
    if store.backend == "sqlite":
        assert len(names) == 1


async def test_closed_store_refuses_work(migrated_url: str) -> None:
    s = Store(migrated_url)
    await s.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await s.run(_count)
