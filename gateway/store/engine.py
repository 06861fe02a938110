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

  Writers queue on a lock file (``<database>.write-lock``) before ``BEGIN IMMEDIATE``.
  SQLite's own busy handler retries a locked database after sleeps of 1, 2, 5, 10, 15,
  20, 25 ... ms, so with intake and processing in two processes (issue 5) a writer
  routinely slept far longer than the transaction it waited for; the lock file is
  polled every 50 us to 1 ms instead and taken the moment the other writer releases
  it (after its COMMIT, when the connection goes back to the pool).  SQLite's lock
  stays the source of truth: after ``busy_timeout`` without the lock file, BEGIN
  IMMEDIATE is tried anyway, and a process that dies releases the file lock with it.

  A writer that has to wait says so on a second file (``<database>.write-wait``, a
  shared flock held while waiting).  Two things read it: a writer about to take the
  lock lets announced waiters go first (a process that commits and begins again at
  once would otherwise win every race against a waiter polling every 1 ms), and the
  processing group ends early (:func:`writers_waiting`) instead of holding the lock
  for its whole time budget while the SMTP intake waits to journal a message and
  answer 250 (issue 5: the intake latency was the group budget).

* PostgreSQL through psycopg 3.  ``postgresql://`` and ``postgres://`` are rewritten to
  ``postgresql+psycopg://`` so a URL copied from any PostgreSQL tool works.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url

from gateway.store.raw import execute_driver_sql

__all__ = [
    "SQLITE_BEGIN_OPTION",
    "Backend",
    "UnsupportedDatabaseError",
    "backend_of",
    "make_engine",
    "normalise_url",
    "writers_waiting",
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
_BUSY_TIMEOUT_SECONDS = 5.0
# Where a connection keeps its lock file descriptor and whether it holds the lock
# (the pool entry's ``info`` dict lives as long as the DBAPI connection).
_LOCK_FD = "imip_write_lock_fd"
_LOCK_HELD = "imip_write_lock_held"
_WAIT_FD = "imip_write_wait_fd"
# How long a writer lets announced waiters go first before it competes anyway (a
# waiter polls at most every 1 ms, so it normally gets in well within this).
_YIELD_SECONDS = 0.005


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
        _install_sqlite_listeners(engine, path)
        _direct_savepoints(engine)
        return engine
    engine = create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A replica outliving a PostgreSQL restart must not hand out dead connections.
        pool_pre_ping=True,
    )
    _direct_savepoints(engine)
    return engine


def _direct_savepoints(engine: Engine) -> None:
    """Emit SAVEPOINT / RELEASE / ROLLBACK TO straight on the DB-API cursor.

    Processing runs every message in its own SAVEPOINT (group commit), and SQLAlchemy
    compiles a fresh clause for each of these statements (the name varies, so they are
    not cached): about 25 us each against 1 us for SQLite.  The SQL is the same as
    SQLAlchemy's, and the Session's nested-transaction bookkeeping is untouched (it calls
    these dialect hooks).  Only this engine's dialect instance is changed.
    """
    dialect = engine.dialect
    quote = dialect.identifier_preparer.quote

    def do_savepoint(connection: Connection, name: str) -> None:
        execute_driver_sql(connection, f"SAVEPOINT {quote(name)}")

    def do_release_savepoint(connection: Connection, name: str) -> None:
        execute_driver_sql(connection, f"RELEASE SAVEPOINT {quote(name)}")

    def do_rollback_to_savepoint(connection: Connection, name: str) -> None:
        execute_driver_sql(connection, f"ROLLBACK TO SAVEPOINT {quote(name)}")

    # Instance attributes shadow the class's methods for this dialect object only.
    vars(dialect).update(
        do_savepoint=do_savepoint,
        do_release_savepoint=do_release_savepoint,
        do_rollback_to_savepoint=do_rollback_to_savepoint,
    )


def _acquire(info: dict[Any, Any]) -> None:
    """Take the write lock file, polling finely; give up after the busy timeout.

    Waiters already announced on the wait file go first (bounded by ``_YIELD_SECONDS``);
    while this writer waits it announces itself the same way.
    """
    fd = info.get(_LOCK_FD)
    if fd is None or info.get(_LOCK_HELD):
        return
    wait_fd: int | None = info.get(_WAIT_FD)
    if wait_fd is not None and _announced(wait_fd):
        _let_waiters_in(wait_fd)
    announced = False
    delay, deadline = 0.00005, time.monotonic() + _BUSY_TIMEOUT_SECONDS
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return  # BEGIN IMMEDIATE decides (and SQLite's busy_timeout applies)
                if not announced and wait_fd is not None:
                    announced = _announce(wait_fd)
                time.sleep(delay)
                delay = min(delay * 2, 0.001)
                continue
            info[_LOCK_HELD] = True
            return
    finally:
        if announced:
            assert wait_fd is not None
            fcntl.flock(wait_fd, fcntl.LOCK_UN)


def _announce(wait_fd: int) -> bool:
    """Hold the wait file shared: "a writer is waiting".  False if a probe held it."""
    try:
        fcntl.flock(wait_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a probe holds it exclusively for an instant; try at the next poll
    return True


def _announced(wait_fd: int) -> bool:
    """Whether some writer (another connection or process) is announced as waiting."""
    try:
        fcntl.flock(wait_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(wait_fd, fcntl.LOCK_UN)
    return False


def _let_waiters_in(wait_fd: int) -> None:
    deadline = time.monotonic() + _YIELD_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.00005)
        if not _announced(wait_fd):
            return


def writers_waiting(connection: Connection) -> bool:
    """Whether another writer waits for the SQLite write lock this connection holds.

    Always False on PostgreSQL (row locks, no database-wide writer) and for a database
    without a file.  Costs two system calls.
    """
    wait_fd = connection.connection.info.get(_WAIT_FD)
    return wait_fd is not None and _announced(wait_fd)


def _release(info: dict[Any, Any]) -> None:
    fd = info.get(_LOCK_FD)
    if fd is not None and info.pop(_LOCK_HELD, False):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _install_sqlite_listeners(engine: Engine, path: Path | None) -> None:
    # The lock file and the wait file (module docstring), beside the database.
    files = (
        None
        if path is None
        else (f"{path.expanduser()}.write-lock", f"{path.expanduser()}.write-wait")
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Disable pysqlite's implicit transactions; "begin" below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            for pragma in _SQLITE_PRAGMAS:
                cursor.execute(pragma)
        finally:
            cursor.close()
        if files is not None:
            record.info[_LOCK_FD] = os.open(files[0], os.O_RDWR | os.O_CREAT, 0o600)
            record.info[_WAIT_FD] = os.open(files[1], os.O_RDWR | os.O_CREAT, 0o600)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE"):  # never interpolate anything else
            mode = "DEFERRED"
        info = connection.connection.info
        if mode == "IMMEDIATE":
            _acquire(info)
        try:
            execute_driver_sql(connection, f"BEGIN {mode}")
        except BaseException:
            _release(info)
            raise

    # The lock is released when the connection goes back to the pool: after the COMMIT
    # or ROLLBACK, whatever ended the unit of work (also when it failed).
    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        _release(record.info)

    @event.listens_for(engine, "close")
    def _on_close(_dbapi_connection: Any, record: Any) -> None:
        _release(record.info)
        for key in (_LOCK_FD, _WAIT_FD):
            fd = record.info.pop(key, None)
            if fd is not None:
                os.close(fd)
