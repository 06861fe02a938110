"""``imip-gateway outbox list|retry|purge``: the queue of outgoing iMIP mail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.cli.base import EXIT_CONFIG, EXIT_OK, Context, Subparsers, add_command
from gateway.cli.output import print_json, print_table

_EXITS = "\n\nexit codes: 0 done, 1 database error, 2 usage error."


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers,
        "outbox",
        None,
        help="inspect and manage outgoing mail",
        description="The durable outbox: every REPLY, REQUEST, CANCEL... the gateway sends."
        + _EXITS,
    )
    sub = group.add_subparsers(title="outbox commands", metavar="COMMAND")
    lst = add_command(sub, "list", outbox_list, help="newest first", description="List." + _EXITS)
    lst.add_argument("--status", choices=("pending", "sending", "sent", "failed"))
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")
    retry = add_command(
        sub,
        "retry",
        outbox_retry,
        help="make failed (or given) rows due now",
        description="Queue rows for an immediate new attempt." + _EXITS,
    )
    retry.add_argument("ids", nargs="*", type=int, help="row ids (default: every failed row)")
    purge = add_command(
        sub,
        "purge",
        outbox_purge,
        help="delete finished rows older than N days",
        description="Delete sent (and with --failed, failed) rows older than --days." + _EXITS,
    )
    purge.add_argument("--days", type=float, default=30.0)
    purge.add_argument("--failed", action="store_true", help="also purge failed rows")


def outbox_list(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        rows = services.store.read_sync(
            queries.outbox_list, status=ctx.args.status, limit=ctx.args.limit
        )
    if ctx.args.json:
        print_json(rows)
    else:
        print_table(
            rows,
            (
                "id",
                "status",
                "method",
                "recipient",
                "uid",
                "attempts",
                "next_attempt_at",
                "last_error",
            ),
        )
    return EXIT_OK


def outbox_retry(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.store import outbox

    now = datetime.now(UTC)
    with open_services(ctx.settings) as services:
        if ctx.args.ids:
            count = services.store.run_sync(outbox.retry_now, ctx.args.ids, now=now)
        else:
            count = services.store.run_sync(outbox.retry_now, None, now=now, all_failed=True)
    print(f"{count} row(s) queued for retry")
    return EXIT_OK


def outbox_purge(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.store import outbox

    if ctx.args.days < 0:
        print("--days must not be negative")
        return EXIT_CONFIG
    older = datetime.now(UTC) - timedelta(days=ctx.args.days)
    statuses: tuple[outbox.OutboxStatus, ...] = ("sent", "failed") if ctx.args.failed else ("sent",)
    with open_services(ctx.settings) as services:
        count = services.store.run_sync(outbox.purge, older, statuses)
    print(f"{count} row(s) purged")
    return EXIT_OK
