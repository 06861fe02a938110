"""Rate limiting of automatic replies per correspondent (RFC 3834 section 2).

Automatic responders must not answer the same correspondent without bound: two systems
replying to each other would otherwise loop.  A fixed window per correspondent is enough
here and costs one indexed row.

One statement per hit (issue 5): an upsert that creates the row, restarts an expired
window or counts the hit, and returns a row only when the hit is allowed.  It takes the
same row lock as the former INSERT ... ON CONFLICT DO NOTHING + SELECT ... FOR UPDATE +
UPDATE (the conflicting row is locked by ON CONFLICT DO UPDATE on PostgreSQL; SQLite has
one writer), so concurrent replicas still count every reply exactly once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.store.models import ReplyRateRow
from gateway.store.raw import Prepared
from gateway.store.types import UTCDateTime

__all__ = ["hit"]

_RATE = cast(Table, ReplyRateRow.__table__)


def _hit_statement(make_insert: Any) -> Any:
    stmt = make_insert(_RATE).values(
        correspondent=bindparam("key"),
        window_start=bindparam("now", type_=UTCDateTime()),
        count=1,
    )
    # ``window_start <= now - window`` is ``now >= window_start + window`` (an expired
    # window) without date arithmetic in SQL, which SQLite and PostgreSQL spell apart.
    expired = _RATE.c.window_start <= bindparam("cutoff", type_=UTCDateTime())
    return stmt.on_conflict_do_update(
        index_elements=["correspondent"],
        set_={
            "window_start": case((expired, stmt.excluded.window_start), else_=_RATE.c.window_start),
            "count": case((expired, 1), else_=_RATE.c.count + 1),
        },
        # A refused hit changes nothing (and returns no row).
        where=expired | (_RATE.c.count < bindparam("limit")),
    ).returning(_RATE.c.count)


_HIT = {
    "postgresql": Prepared(_hit_statement(postgresql.insert)),
    "sqlite": Prepared(_hit_statement(sqlite.insert)),
}
# limit <= 0 refuses everything; the row is still created, as a hit always did.
_CREATE = {
    name: Prepared(
        make_insert(_RATE)
        .values(
            correspondent=bindparam("key"),
            window_start=bindparam("now", type_=UTCDateTime()),
            count=0,
        )
        .on_conflict_do_nothing(index_elements=["correspondent"])
    )
    for name, make_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}


def hit(s: Session, correspondent: str, now: datetime, window_seconds: float, limit: int) -> bool:
    """Count one automatic reply to ``correspondent``; True if it is allowed.

    A refused hit is not counted, so a correspondent is released when the window ends.
    """
    key = normalise(correspondent)
    dialect = s.get_bind().dialect.name
    if limit <= 0:
        _CREATE[dialect].execute(s, {"key": key, "now": now})
        return False
    params = {
        "key": key,
        "now": now,
        "cutoff": now - timedelta(seconds=window_seconds),
        "limit": limit,
    }
    return _HIT[dialect].first(s, params) is not None
