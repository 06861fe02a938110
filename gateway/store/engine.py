"""Engine construction: URL normalisation and per-connection database settings.

Two back ends are supported:

* SQLite (the zero-setup default).  The file's parent directories are created, and every
  new DBAPI connection gets ``journal_mode=WAL`` (readers never block the single writer),
  ``synchronous=NORMAL`` (durable at checkpoints, the usual pairing with WAL),
  ``foreign_keys=ON`` (SQLite ignores FOREIGN KEY clauses otherwise, and the schema
  relies on ON DELETE CASCADE) and ``busy_timeout=5000`` (another process, e.g. the CLI,
  holding the write lock makes us wait rather than fail at once).

  pysqlite's own transaction handling starts transactions lazily and never around
  SELECTs, which breaks SERIALIZABLE reads and SAVEPOINTs.  As the SQLAlchemy SQLite
  documentation recommends, the driver's handling is switched off and ``BEGIN`` is
  emitted by us.  Writers use ``BEGIN IMMEDIATE``: taking the write lock up front means
  a second process waits on ``busy_timeout`` instead of failing with SQLITE_BUSY when a
  deferred read transaction tries to upgrade to a write.

* PostgreSQL through psycopg 3.  ``postgresql://`` and ``postgres://`` are rewritten to
  ``postgresql+psycopg://`` so a URL copied from any PostgreSQL tool works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

__all__ = [
    "SQLITE_BEGIN_OPTION",
    "Backend",
    "UnsupportedDatabaseError",
    "backend_of",
    "make_engine",
    "normalise_url",
]

Backend = Literal["sqlite", "postgresql"]

#: Execution option naming the ``BEGIN`` flavour used on SQLite ("IMMEDIATE" or "DEFERRED").
SQLITE_BEGIN_OPTION = "imip_sqlite_begin"

_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class UnsupportedDatabaseError(ValueError):
    """The URL names a database this gateway does not support."""


def normalise_url(url: str | URL) -> URL:
    """Return ``url`` with the driver made explicit.

    ``postgresql://``/``postgres://`` (and the psycopg2 driver name) become
    ``postgresql+psycopg://``; ``sqlite://`` stays on the standard library driver.
    Anything else raises :class:`UnsupportedDatabaseError` with the offending scheme.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    name = parsed.drivername
    if name in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if name in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+pysqlite")
    raise UnsupportedDatabaseError(
        f"unsupported database URL scheme {name!r}: use sqlite:///PATH or postgresql://..."
    )


def backend_of(url: str | URL) -> Backend:
    """Return ``"sqlite"`` or ``"postgresql"`` for a database URL."""
    return "sqlite" if normalise_url(url).get_backend_name() == "sqlite" else "postgresql"


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def make_engine(url: str | URL, *, pool_size: int = 5, echo: bool = False) -> Engine:
    """Create an :class:`Engine` for ``url`` with the gateway's connection settings.

    ``pool_size`` applies to PostgreSQL; a SQLite engine serves one writer thread plus the
    occasional migration or CLI call, so its pool is left at SQLAlchemy's default.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None:
            path.expanduser().parent.mkdir(parents=True, exist_ok=True)
            parsed = parsed.set(database=str(path.expanduser()))
        engine = create_engine(parsed, echo=echo)
        _install_sqlite_listeners(engine)
        return engine
    return create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A replica outliving a PostgreSQL restart must not hand out dead connections.
        pool_pre_ping=True,
    )


def _install_sqlite_listeners(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Disable pysqlite's implicit transactions; "begin" below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):  # never interpolate anything else
            mode = "DEFERRED"
        connection.exec_driver_sql(f"BEGIN {mode}")
