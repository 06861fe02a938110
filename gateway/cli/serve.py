"""``imip-gateway serve``: run the daemon until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from gateway.cli.base import EXIT_FAILURE, EXIT_OK, Context, Subparsers, add_command

log = logging.getLogger(__name__)

DESCRIPTION = """\
Run the gateway: listeners, IMAP pollers and the outbox worker, until SIGTERM or
SIGINT.  On a signal it stops accepting, lets in-flight work finish (up to
gateway.shutdown_timeout_seconds; a second signal cancels at once) and exits 0.

With gateway.processing_process (the default) journal processing and the outbox run
in a child process that serve starts, restarts if it dies and stops with itself, so
intake and processing each use a CPU core.

On SQLite with database.auto_upgrade (the default) the schema is created or upgraded
first, so the first run needs no extra step.  On PostgreSQL run `imip-gateway db
upgrade` before starting the replicas; serve refuses to start (exit 1) on a schema
that is not the newest.  With a processing process, that process does this check
before the listeners open; if it fails, serve exits 1 without listening.

exit codes: 0 clean shutdown, 1 a component failed, 2 configuration error."""


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "serve",
        run,
        help="run the daemon (until SIGTERM/SIGINT)",
        description=DESCRIPTION,
    )
    # Internal: how `serve` starts its processing process (gateway.processing_process).
    parser.add_argument("--role", choices=("processing",), default=None, help=argparse.SUPPRESS)


def child_argv(ctx: Context) -> list[str]:
    """The command line of the processing process: this command with ``--role``.

    The child inherits the environment (so ``IMIP_GATEWAY_*`` overrides apply to it
    too) and the working directory (so a relative ``--config`` still resolves).
    """
    argv = [sys.executable, "-m", "gateway"]
    if ctx.config_path is not None:
        argv += ["--config", str(ctx.config_path)]
    if ctx.args.log_level:
        argv += ["--log-level", ctx.args.log_level]
    if ctx.args.log_format:
        argv += ["--log-format", ctx.args.log_format]
    return [*argv, "serve", "--role", "processing"]


def run(ctx: Context) -> int:
    from gateway.app import (
        Role,
        SchemaNotCurrentError,
        build_app,
        prepare_database,
        prepare_database_in_fork,
    )
    from gateway.daemon import DaemonFailure

    settings = ctx.settings
    role: Role = "all"
    if getattr(ctx.args, "role", None) == "processing":
        role = "processing"
    elif settings.gateway.processing_process:
        role = "intake"
    if role != "processing":
        log.info(
            "starting imip-gateway (config: %s, database: %s%s)",
            ctx.config_path or "built-in defaults + environment",
            settings.masked()["database"]["url"],
            "; processing in a second process" if role == "intake" else "",
        )
    settings.gateway.state_dir.mkdir(parents=True, exist_ok=True)
    # The schema check: in one process, here; split, in the processing process before
    # its READY (the intake process waits for that READY before it listens), in a
    # forked helper so that neither process keeps Alembic (~11 MB) in memory.
    if role == "processing":
        if not prepare_database_in_fork(settings):
            return EXIT_FAILURE
    elif role == "all":
        try:
            prepare_database(settings)
        except SchemaNotCurrentError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
    app = build_app(settings, role=role, child_argv=child_argv(ctx) if role == "intake" else ())
    label = "imip-gateway processing process" if role == "processing" else "imip-gateway"

    async def serve() -> None:
        from gateway.daemon import run_daemon

        try:
            await run_daemon(
                app.runnables,
                drain_timeout=settings.gateway.shutdown_timeout_seconds,
                label=label,
            )
        finally:
            await app.close()

    try:
        asyncio.run(serve())
    except DaemonFailure as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK
