"""Column types shared by the ORM models.

Kept apart from :mod:`gateway.store.models` so the meaning of each type is documented
once.  The hand-written migrations spell the same physical types (``sa.DateTime()``,
``sa.BigInteger().with_variant(sa.Integer(), "sqlite")``) without importing this module,
so the schema history never depends on today's Python code.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Integer
from sqlalchemy.types import TypeDecorator

__all__ = ["IdType", "NaiveUTCError", "UTCDateTime"]

#: Surrogate primary keys: 64-bit on PostgreSQL (journal and outbox rows accumulate for
#: years), but plain INTEGER on SQLite because only ``INTEGER PRIMARY KEY`` is an alias
#: of the rowid there and auto-increments.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class NaiveUTCError(ValueError):
    """A naive datetime reached the store; its zone is unknown, so it is refused."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and returned as an aware UTC ``datetime``.

    SQLite has no time-zone type and PostgreSQL's ``timestamptz`` would make the two
    back ends behave differently; storing naive UTC everywhere gives identical
    comparisons and ordering on both.  Naive input is refused rather than guessed: a
    caller that forgot a zone has a bug that must surface (iCalendar floating times are
    never stored here, they live in the component text and in ``instance_key``).
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise NaiveUTCError(f"naive datetime {value.isoformat()} given to the store")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - driver contract
            raise TypeError(f"expected datetime from the database, got {type(value)!r}")
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)
