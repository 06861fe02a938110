"""``imip-gateway ingest``: process one raw message as if it had been delivered.

For Sieve ``pipe``/procmail setups and for operators.  It takes the same path as the
listeners: the message is journaled durably first, then processed; the outcome of
every calendar part is printed.  Exit 0 unless the gateway itself failed (a message
that cannot be processed is quarantined and reported, which is a success of the
gateway).
"""

from __future__ import annotations

import logging
import sys

from gateway.cli.base import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, Context, Subparsers, add_command
from gateway.cli.output import InputError, print_json, print_table, read_input

log = logging.getLogger(__name__)

_COLUMNS = ("part", "recipient", "method", "component", "uid", "recurrence_id", "outcome", "reason")


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "ingest",
        ingest,
        help="process one raw RFC 5322 message (file or stdin) as if delivered",
        description="Journal and process one message exactly as the SMTP/LMTP/IMAP"
        " listeners do, then print one outcome per calendar part and recipient.\n\n"
        "Without --recipient, every configured local user the calendar names is a"
        " recipient.\n\nexit codes: 0 processed (whatever the outcome), 1 the gateway"
        " failed (database unreachable...), 2 usage or configuration error.",
    )
    parser.add_argument(
        "--recipient",
        action="append",
        default=[],
        metavar="ADDR",
        help="envelope recipient (repeatable); must be a configured local user",
    )
    parser.add_argument("--sender", default="", metavar="ADDR", help="envelope sender")
    parser.add_argument("--json", action="store_true", help="print the outcomes as JSON")
    parser.add_argument("file", metavar="FILE|-", help="the message; - reads standard input")


def ingest(ctx: Context) -> int:
    from gateway.app import open_services

    args = ctx.args
    try:
        raw = read_input(args.file)
    except InputError as exc:
        print(f"imip-gateway ingest: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    services = open_services(ctx.settings)
    try:
        journal_id, duplicate, results = services.ingest_now(
            raw, recipients=list(args.recipient), sender=args.sender
        )
    except Exception:
        log.exception("ingest failed")
        return EXIT_FAILURE
    finally:
        services.close()
    if args.json:
        print_json({"journal_id": journal_id, "duplicate": duplicate, "outcomes": results})
    else:
        note = " (duplicate delivery: outcomes of the first)" if duplicate else ""
        print(f"journal {journal_id}{note}")
        print_table(results, _COLUMNS)
    return EXIT_OK
