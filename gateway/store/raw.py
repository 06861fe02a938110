"""Prebuilt statements run straight on the transaction's DB-API cursor.

Why: processing one journal row runs about a dozen statements, and measured with
cProfile SQLAlchemy's per-execution machinery (``Session.execute`` dispatch, execution
context, compiled-cache lookup, parameter construction, the ``Result`` and ``Row``
objects) cost several times the SQLite call itself.  The statements of the hot path are
fixed, so all of that work can be done once: :class:`Prepared` compiles a Core statement
per dialect (and per set of parameter names, which decides an INSERT's column list)
with SQLAlchemy's own compiler and keeps the SQL string, the parameter order and the
bind/result processors of every type.  Executing it is a parameter tuple (or dict), one
``cursor.execute`` and the result conversions.

What stays the same: the statement runs on the DB-API connection of the Session's
current transaction, so ``BEGIN IMMEDIATE`` (SQLite), savepoints, ``FOR UPDATE`` row
locks and advisory locks (PostgreSQL) behave exactly as before; the SQL text is the one
SQLAlchemy would send; every value goes through the same type processors (e.g.
:class:`~gateway.store.types.UTCDateTime` refuses naive datetimes and returns aware UTC,
JSON is serialised, SQLite booleans come back as ``bool``); driver errors are wrapped in
the same :mod:`sqlalchemy.exc` classes (``IntegrityError`` ...); ``before_cursor_execute``
and ``after_cursor_execute`` listeners still see every statement (with ``context=None``,
as there is no execution context), so statement counting and tracing keep working.
``echo`` logs them too.  Not kept: the invalidation of a connection that a driver error
shows to be dead (the pool's pre-ping catches it at the next checkout).

What is refused (:class:`UnsupportedStatementError` at first use, so such a statement
stays on SQLAlchemy): expanding ``IN`` parameters and other parameters rendered at
execution time, and column defaults that are not plain values (a Python callable or SQL
expression computed per row).  Results are plain tuples (or dicts by column key); ORM
entities are never built here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["Prepared", "UnsupportedStatementError", "execute_driver_sql"]

_Processor = Callable[[Any], Any]
# Distinct parameter-name sets one statement is compiled for (an INSERT's column list
# follows the names given); a caller varying them without bound is a bug.
_MAX_VARIANTS = 32


class UnsupportedStatementError(ValueError):
    """The statement needs per-execution compilation; run it through SQLAlchemy."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: bool
    # Parameter names in the order the SQL wants them (repeated where the SQL repeats).
    names: tuple[str, ...]
    # Values of parameters the caller may leave out: literals, scalar column defaults.
    defaults: dict[str, Any]
    # ``params -> tuple of values in order``: one C-level itemgetter call.
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]]
    # (position, processor) of every parameter whose type converts the value.
    bind_processors: tuple[tuple[int, _Processor], ...]
    # Result columns: keys and processors (None where the driver value is final).
    keys: tuple[str, ...]
    # (position, processor) of every result column whose type converts the value.
    processors: tuple[tuple[int, _Processor], ...]
    error_class: type[Exception]
    dialect: Dialect


class Prepared:
    """One Core statement, compiled once per dialect, executed on the raw cursor.

    Built at import time next to the statement it wraps; compiles lazily on first use
    per dialect (both SQLite and PostgreSQL can be served by one process, e.g. tests).
    """

    __slots__ = ("_clause", "_compiled", "statement")

    def __init__(self, statement: Executable) -> None:
        if not isinstance(statement, ClauseElement):
            raise TypeError(f"not a Core statement: {statement!r}")
        #: The SQLAlchemy statement (for running it the usual way, e.g. in tests).
        self.statement = statement
        self._clause = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    # -- compilation ---------------------------------------------------------------------

    def _compile(self, dialect: Dialect, names: tuple[str, ...]) -> _Compiled:
        key = (dialect.name, names)
        found = self._compiled.get(key)
        if found is not None:
            return found
        if len(self._compiled) >= _MAX_VARIANTS:
            raise UnsupportedStatementError("too many parameter-name sets for one statement")
        compiled = self._clause.compile(dialect=dialect, column_keys=list(names))
        if compiled.implicit_returning:  # type: ignore[attr-defined]
            # PostgreSQL adds ``RETURNING id`` for ``inserted_primary_key``; the raw
            # path reports no primary key, so leave it out as for executemany.
            compiled = self._clause.compile(
                dialect=dialect, column_keys=list(names), for_executemany=True
            )
        assert isinstance(compiled, SQLCompiler)
        made = _build(compiled, dialect)
        self._compiled[key] = made
        return made

    # -- execution -----------------------------------------------------------------------

    def _connect(self, s: Session, names: tuple[str, ...]) -> tuple[Connection, _Compiled]:
        if s.autoflush:
            # Session.execute autoflushes pending ORM changes first (Core statements on
            # tables too), so a raw statement sees them as before; a no-op when clean.
            s.flush()
        conn = _connection(s)
        return conn, self._compile(conn.dialect, names)

    def _execute(
        self, s: Session, params: Mapping[str, Any], *, fetch: bool
    ) -> tuple[_Compiled, list[Any], int]:
        conn, compiled = self._connect(s, tuple(params))
        try:
            args = _arguments(compiled, params)
        except Exception as error:  # a bind processor refused a value (NaiveUTCError ...)
            raise _wrap(compiled, params, error, many=False) from error
        rows, count = _run(conn, compiled, args, many=False, fetch=fetch)
        return compiled, rows, count

    def rows(self, s: Session, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every result row as a tuple, values converted as SQLAlchemy would."""
        compiled, rows, _count = self._execute(s, params, fetch=True)
        if not compiled.processors:
            return [tuple(row) for row in rows]
        return [_convert(compiled.processors, row) for row in rows]

    def first(self, s: Session, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first result row, or None."""
        rows = self.rows(s, params)
        return rows[0] if rows else None

    def scalar(self, s: Session, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = self.first(s, params)
        return None if row is None else row[0]

    def mappings(self, s: Session, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every result row as a dict keyed by the statement's column keys."""
        compiled, rows, _count = self._execute(s, params, fetch=True)
        keys = compiled.keys
        if not compiled.processors:
            return [dict(zip(keys, row, strict=True)) for row in rows]
        return [dict(zip(keys, _convert(compiled.processors, row), strict=True)) for row in rows]

    def execute(self, s: Session, params: Mapping[str, Any]) -> int:
        """Run a statement without a result; returns the number of rows matched."""
        return self._execute(s, params, fetch=False)[2]

    def execute_many(self, s: Session, rows: Sequence[Mapping[str, Any]]) -> None:
        """``executemany`` over ``rows`` (every row with the names of the first)."""
        if not rows:
            return
        if len(rows) == 1:
            self._execute(s, rows[0], fetch=False)
            return
        conn, compiled = self._connect(s, tuple(rows[0]))
        if compiled.keys:
            raise UnsupportedStatementError("executemany of a statement with a result")
        try:
            args = [_arguments(compiled, row) for row in rows]
        except Exception as error:
            raise _wrap(compiled, rows, error, many=True) from error
        _run(conn, compiled, args, many=True, fetch=False)


def _run(
    conn: Connection, compiled: _Compiled, args: Any, *, many: bool, fetch: bool
) -> tuple[list[Any], int]:
    """One execute (or executemany) on the transaction's cursor, as Connection does it:
    listeners before and after, echo, driver errors wrapped.  Returns (rows, rowcount)."""
    cursor = _cursor(conn)
    before, after = _listeners(conn)
    if conn._echo:
        _log(conn, compiled.sql, args)
    try:
        if before:
            before(conn, cursor, compiled.sql, args, None, many)
        if many:
            cursor.executemany(compiled.sql, args)
            rows: list[Any] = []
        else:
            cursor.execute(compiled.sql, args)
            rows = cursor.fetchall() if fetch else []
        count: int = cursor.rowcount
        if after:
            after(conn, cursor, compiled.sql, args, None, many)
    except compiled.error_class as error:
        raise _wrap(compiled, args, error, many=many) from error
    finally:
        cursor.close()
    return rows, count


# Where a Session remembers the Connection of its current transaction (Session.info).
_CONNECTION_KEY = "imip_raw_connection"


def _connection(s: Session) -> Connection:
    """``s.connection()``, remembered while the session's current transaction lasts.

    ``Session.connection()`` walks SQLAlchemy's transaction state machine on every call
    (about a tenth of the processing CPU per REPLY: ten statements a message).  It is
    still called once per transaction and per savepoint: that first call is what emits
    a ``begin_nested()``'s SAVEPOINT.  The remembered answer is used only while that very
    (innermost) transaction is current and active: after a failed flush SQLAlchemy
    refuses further statements until rollback, and so must this path.
    """
    current = s.get_nested_transaction() or s.get_transaction()
    remembered = s.info.get(_CONNECTION_KEY)
    if (
        remembered is not None
        and current is not None
        and remembered[0] is current
        and current.is_active
    ):
        conn: Connection = remembered[1]
        return conn
    conn = s.connection()
    s.info[_CONNECTION_KEY] = (s.get_nested_transaction() or s.get_transaction(), conn)
    return conn


def execute_driver_sql(conn: Connection, sql: str) -> None:
    """Run a statement without parameters or result (BEGIN, SAVEPOINT ...) on ``conn``.

    ``Connection.exec_driver_sql`` costs about ten times the SQLite call for these;
    listeners and error classes stay as with it.
    """
    dialect = conn.dialect
    error_class = dialect.loaded_dbapi.Error
    before, after = _listeners(conn)
    cursor = _cursor(conn)
    if conn._echo:
        _log(conn, sql, ())
    try:
        if before:
            before(conn, cursor, sql, (), None, False)
        cursor.execute(sql)
        if after:
            after(conn, cursor, sql, (), None, False)
    except error_class as error:
        raise exc.DBAPIError.instance(sql, (), error, error_class, dialect=dialect) from error
    finally:
        cursor.close()


def _log(conn: Connection, sql: str, args: Any) -> None:
    # ``echo=True`` (database.echo) logs these statements as SQLAlchemy does.
    conn._log_info(sql)
    conn._log_info("[raw] %r", args)


def _listeners(conn: Connection) -> tuple[Any, Any]:
    """The cursor-execute listeners of ``conn`` (falsy when none are registered).

    The engine always has listeners (connect, begin), so SQLAlchemy's own ``_has_events``
    flag is always set; asking the two collections is cheaper than dispatching to them.
    """
    if not (conn._has_events or conn.engine._has_events):
        return None, None
    dispatch = conn.dispatch
    return dispatch.before_cursor_execute, dispatch.after_cursor_execute


def _cursor(conn: Connection) -> Any:
    # The pool's DB-API connection of this very transaction (not a new one).
    return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _convert(processors: tuple[tuple[int, _Processor], ...], row: Sequence[Any]) -> tuple[Any, ...]:
    values = list(row)
    for index, processor in processors:
        value = values[index]
        if value is not None:  # every processor maps None to None
            values[index] = processor(value)
    return tuple(values)


def _arguments(compiled: _Compiled, params: Mapping[str, Any]) -> Any:
    source = {**compiled.defaults, **params} if compiled.defaults else params
    try:
        values: Any = compiled.getter(source)
    except KeyError as missing:
        name = missing.args[0]
        raise exc.InvalidRequestError(f"A value is required for bind parameter {name!r}") from None
    if compiled.bind_processors:
        values = list(values)
        for index, processor in compiled.bind_processors:
            values[index] = processor(values[index])
    if compiled.positional:
        return tuple(values)
    return dict(zip(compiled.names, values, strict=True))


def _getter(names: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda _params: ()
    if len(names) == 1:
        (name,) = names
        return lambda params: (params[name],)
    return operator.itemgetter(*names)


def _wrap(compiled: _Compiled, args: Any, error: Exception, *, many: bool) -> Exception:
    # The same exception classes Connection.execute raises: the DBAPIError subclass of a
    # driver error (IntegrityError ...), StatementError around anything else.
    return exc.DBAPIError.instance(
        compiled.sql,
        args,
        error,
        compiled.error_class,
        dialect=compiled.dialect,
        ismulti=many,
    )


def _build(compiled: SQLCompiler, dialect: Dialect) -> _Compiled:
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise UnsupportedStatementError("parameters rendered at execution (expanding IN)")
    if any(b.expanding for b in compiled.binds.values()):  # pragma: no cover - see above
        raise UnsupportedStatementError("expanding IN parameter")
    if compiled.escaped_bind_names:
        raise UnsupportedStatementError("bind names that need escaping")
    defaults: dict[str, Any] = {}
    for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
        default = column.default if column in compiled.insert_prefetch else column.onupdate
        if default is None or not default.is_scalar:
            raise UnsupportedStatementError(f"column {column.key} has a computed default")
        defaults[column.key] = default.arg  # type: ignore[attr-defined]

    positional = dialect.positional
    if positional:
        names: list[str] = list(compiled.positiontup or ())
    else:
        # pyformat: only the names the SQL text uses (anonymous values replaced by a
        # column's own name do not appear).
        names = [n for n in compiled.binds if f"%({n})s" in compiled.string]
    processors: list[tuple[int, _Processor]] = []
    for index, name in enumerate(names):
        bindparam = compiled.binds[name]
        if name in defaults:
            pass  # a column default (above)
        elif bindparam.callable is not None:
            defaults[name] = bindparam.effective_value
        elif not bindparam.required:
            defaults[name] = bindparam.value  # a literal of the statement
        processor = bindparam.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((index, processor))

    columns = list(_result_columns(compiled))
    keys = tuple(key for key, _type in columns)
    results = tuple(
        type_.dialect_impl(dialect).result_processor(dialect, None) for _key, type_ in columns
    )
    dbapi = dialect.loaded_dbapi
    return _Compiled(
        sql=compiled.string,
        positional=positional,
        names=tuple(names),
        defaults={name: value for name, value in defaults.items() if name in names},
        getter=_getter(tuple(names)),
        bind_processors=tuple(processors),
        keys=keys,
        processors=tuple((i, p) for i, p in enumerate(results) if p is not None),
        error_class=dbapi.Error,
        dialect=dialect,
    )


def _result_columns(compiled: SQLCompiler) -> list[tuple[str, Any]]:
    """(key, type) of each result column, in order (empty for a statement without one)."""
    statement: Any = compiled.statement
    if not compiled._result_columns:  # no SELECT list and no RETURNING
        return []
    exported = list(statement.exported_columns.items())
    if len(exported) != len(compiled._result_columns):  # pragma: no cover - safety net
        raise UnsupportedStatementError("result columns differ from the statement's")
    return [(key, column.type) for key, column in exported]
