"""``imip-gateway db upgrade|current``: manage the database schema (Alembic)."""

from __future__ import annotations

import logging

from gateway.cli.base import EXIT_OK, Context, Subparsers, add_command

log = logging.getLogger(__name__)


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers,
        "db",
        None,
        help="manage the database schema (upgrade, current)",
        description="Manage the database schema with the migrations shipped in migrations/.",
    )
    commands = group.add_subparsers(title="db commands", metavar="COMMAND")
    add_command(
        commands,
        "upgrade",
        upgrade,
        help="create or upgrade the schema to the newest version",
        description="Create the schema on an empty database or upgrade it to the newest"
        " revision (idempotent).  Needed before `serve` on PostgreSQL; on SQLite `serve`"
        " does it itself unless database.auto_upgrade = false.\n\n"
        "exit codes: 0 done, 1 database error, 2 configuration error.",
    )
    add_command(
        commands,
        "current",
        current,
        help="print the schema revision of the database",
        description="Print the Alembic revision the database is at, or `none` when it"
        " has no schema yet.\n\nexit codes: 0 done, 1 database error, 2 configuration error.",
    )


def upgrade(ctx: Context) -> int:
    from gateway.store import migrate

    url = ctx.settings.database.url
    migrate.upgrade(url)
    revision = migrate.current(url)
    log.info("database schema at revision %s", revision)
    print(revision or "none")
    return EXIT_OK


def current(ctx: Context) -> int:
    from gateway.store import migrate

    print(migrate.current(ctx.settings.database.url) or "none")
    return EXIT_OK
