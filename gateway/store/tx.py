"""The transaction handle that units of work receive.

Services pass it through to store functions without importing SQLAlchemy themselves
(the layering contract in pyproject.toml: only ``gateway.store`` imports it).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session as Tx

from gateway.store.engine import writers_waiting as _connection_has_waiters

__all__ = ["Tx", "is_transient_error", "savepoint", "writers_waiting"]


@contextmanager
def savepoint(s: Tx) -> Iterator[None]:
    """A SAVEPOINT: an exception inside rolls back only what was done inside."""
    with s.begin_nested():
        yield


# PostgreSQL SQLSTATEs after which the same work, retried in a new transaction, can
# succeed: serialization_failure, deadlock_detected (another transaction held the locks).
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})


def is_transient_error(exc: BaseException) -> bool:
    """True when ``exc`` is a deadlock or serialization failure (retry, don't count).

    Looks for the driver exception's ``sqlstate`` on ``exc``, on SQLAlchemy's ``orig``
    and along the ``__cause__`` chain (a store function may re-raise it wrapped), so
    callers above the store need not know the driver's exception classes.
    """
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        for candidate in (seen, getattr(seen, "orig", None)):
            if getattr(candidate, "sqlstate", None) in _TRANSIENT_SQLSTATES:
                return True
        seen = seen.__cause__
    return False


def writers_waiting(s: Tx) -> bool:
    """Whether another writer waits for the SQLite write lock ``s`` holds (never on
    PostgreSQL): a group commit should end early rather than make it wait."""
    return _connection_has_waiters(s.connection())
