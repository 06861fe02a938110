"""``imip-gateway serve``: run the daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, Context, Subparsers, add_command

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run the gateway: listeners, IMAP pollers and the outbox worker, until SIGTERM or
SIGINT.  On a signal it stops accepting, lets in-flight work finish (up to
gateway.shutdown_timeout_seconds; a second signal cancels at once) and exits 0.

On SQLite with database.auto_upgrade (the default) the schema is created or upgraded
first, so the first run needs no extra step.  On PostgreSQL run `imip-gateway db
upgrade` before starting the replicas; serve refuses to start (exit 1) on a schema
that is not the newest.

exit codes: 0 clean shutdown, 1 a component failed, 2 configuration error."""


def register(subparsers: Subparsers) -> None:
    add_command(
        subparsers,
        "serve",
        run,
        help="run the daemon (until SIGTERM/SIGINT)",
        description=DESCRIPTION,
    )


def run(ctx: Context) -> int:
    from gateway.app import SchemaNotCurrentError, build_app, prepare_database
    from gateway.daemon import DaemonFailure

    settings = ctx.settings
    log.info(
        "starting imip-gateway (config: %s, database: %s)",
        ctx.config_path or "built-in defaults + environment",
        settings.masked()["database"]["url"],
    )
    settings.gateway.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        prepare_database(settings)
    except SchemaNotCurrentError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    app = build_app(settings)

    async def serve() -> None:
        from gateway.daemon import run_daemon

        try:
            await run_daemon(app.runnables, drain_timeout=settings.gateway.shutdown_timeout_seconds)
        finally:
            await app.close()

    try:
        asyncio.run(serve())
    except DaemonFailure as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK
