"""Persistence: the only package that imports SQLAlchemy.

``Store`` is the async facade (one transaction per unit of work, run off the event loop);
the repository modules (:mod:`.journal`, :mod:`.objects`, :mod:`.outbox`, :mod:`.held`,
:mod:`.busy`, :mod:`.imap_state`, :mod:`.rate`) are plain functions taking a ``Session``;
:mod:`.migrate` upgrades the schema.  Table rationale: :mod:`.models`.  The statements
of the per-message hot path run through :mod:`.raw` (compiled once, executed on the
transaction's own DB-API cursor, same SQL and type conversions as SQLAlchemy).
"""

from gateway.store.engine import UnsupportedDatabaseError, backend_of, make_engine, normalise_url
from gateway.store.facade import Store
from gateway.store.limits import MAX_KEY_BYTES, FieldTooLongError
from gateway.store.types import NaiveUTCError

__all__ = [
    "MAX_KEY_BYTES",
    "FieldTooLongError",
    "NaiveUTCError",
    "Store",
    "UnsupportedDatabaseError",
    "backend_of",
    "make_engine",
    "normalise_url",
]
