"""Alembic environment of imip-gateway.

Safe to run programmatically (``gateway.store.migrate``) and from the ``alembic`` command:

* never calls ``logging.config.fileConfig`` -- the daemon owns logging, and reconfiguring
  it from inside a migration would silently drop the daemon's handlers;
* never imports the ORM models: each revision spells its schema out by hand, so old
  revisions keep working whatever the models become (the Mailman 3 rule).  Autogenerate
  compares against metadata only when a caller passes it in ``config.attributes``;
* the database comes from, in order: a ready connection in
  ``config.attributes["connection"]`` (shares the caller's transaction), a URL in
  ``config.attributes["url"]``, ``-x url=...`` on the command line, the environment
  variable ``IMIP_GATEWAY_DATABASE_URL``, or ``sqlalchemy.url`` in an ini file.

Runs synchronously; an asyncio caller runs it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import os
from typing import Any

from alembic import context
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url

config = context.config


def _database_url() -> str:
    url = config.attributes.get("url")
    if not url:
        url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        url = os.environ.get("IMIP_GATEWAY_DATABASE_URL")
    if not url:
        url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: pass -x url=..., or set IMIP_GATEWAY_DATABASE_URL")
    parsed = make_url(str(url))
    # Same rule as the gateway: plain postgresql:// means psycopg 3.
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=config.attributes.get("target_metadata"),
        # SQLite cannot ALTER most things; batch mode rebuilds tables in later revisions.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=config.attributes.get("target_metadata"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_database_url())
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _foreign_keys(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
