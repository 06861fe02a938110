"""Rate limiting of automatic replies per correspondent (RFC 3834 section 2).

Automatic responders must not answer the same correspondent without bound: two systems
replying to each other would otherwise loop.  A fixed window per correspondent is enough
here and costs one indexed row.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.domain.addresses import normalise
from gateway.store.models import ReplyRateRow

__all__ = ["hit"]


def hit(s: Session, correspondent: str, now: datetime, window_seconds: float, limit: int) -> bool:
    """Count one automatic reply to ``correspondent``; True if it is allowed.

    A refused hit is not counted, so a correspondent is released when the window ends.
    """
    key = normalise(correspondent)
    dialect = s.get_bind().dialect.name
    # Create the row race-free (two replicas may both see it missing), then lock it.
    make_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    s.execute(
        make_insert(ReplyRateRow)
        .values(correspondent=key, window_start=now, count=0)
        .on_conflict_do_nothing(index_elements=["correspondent"])
    )
    row = s.scalars(
        select(ReplyRateRow)
        .where(ReplyRateRow.correspondent == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if now >= row.window_start + timedelta(seconds=window_seconds):
        row.window_start = now
        row.count = 0
    if row.count >= limit:
        return False
    row.count += 1
    s.flush()
    return True
