"""The transaction handle that units of work receive.

Services pass it through to store functions without importing SQLAlchemy themselves
(the layering contract in pyproject.toml: only ``gateway.store`` imports it).
"""

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session as Tx

__all__ = ["Tx", "savepoint"]


@contextmanager
def savepoint(s: Tx) -> Iterator[None]:
    """A SAVEPOINT: an exception inside rolls back only what was done inside."""
    with s.begin_nested():
        yield
