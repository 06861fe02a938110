"""``imip-gateway send`` and ``imip-gateway counter``: the organiser's own actions.

``send FILE.ics`` submits a local organiser's event or change: the gateway stores the
organiser copy, works out what changed, bumps SEQUENCE on significant changes and
queues REQUEST/CANCEL/ADD to exactly the attendees concerned (RFC 5546 section 2.1.4).
``counter accept|decline UID`` answers a pending COUNTER proposal (section 3.2.7).
"""

from __future__ import annotations

import logging
import sys

from gateway.cli.base import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, Context, Subparsers, add_command
from gateway.cli.output import InputError, print_json, print_table, read_input

log = logging.getLogger(__name__)

_COLUMNS = ("recipient", "method", "component", "uid", "recurrence_id", "outcome", "reason")


def register(subparsers: Subparsers) -> None:
    send = add_command(
        subparsers,
        "send",
        send_cmd,
        help="submit a local organiser's event or change (an .ics file)",
        description="Store the organiser copy of the event in FILE.ics (the ORGANIZER must"
        " be a configured local user), compute what changed since the stored copy, and"
        " queue REQUEST/CANCEL/ADD mail to the attendees concerned.  METHOD:CANCEL (or"
        " STATUS:CANCELLED) cancels the event for everyone.\n\nexit codes: 0 processed,"
        " 1 the gateway failed, 2 usage error or the submission was refused.",
    )
    send.add_argument("--json", action="store_true")
    send.add_argument("file", metavar="FILE.ics|-")

    counter = add_command(
        subparsers,
        "counter",
        None,
        help="accept or decline a pending COUNTER proposal",
        description="Answer an attendee's COUNTER proposal (RFC 5546 section 3.2.7).",
    )
    sub = counter.add_subparsers(title="counter commands", metavar="COMMAND")
    for name, help_text in (
        ("accept", "apply the proposal and send the new REQUEST to every attendee"),
        ("decline", "send DECLINECOUNTER to the proposer"),
    ):
        cmd = add_command(
            sub,
            name,
            counter_cmd,
            help=help_text,
            description=help_text.capitalize()
            + ".\n\nexit codes: 0 done, 1 the gateway failed, 2 nothing to answer.",
        )
        cmd.add_argument("uid")
        cmd.add_argument("--owner", required=True, metavar="ADDR", help="the local organiser")
        cmd.add_argument("--id", type=int, default=None, help="the proposal's held item id")
        cmd.add_argument("--comment", default="", help="a comment for the proposer")
        cmd.set_defaults(accept=name == "accept")


def send_cmd(ctx: Context) -> int:
    from gateway.app import open_services

    try:
        raw = read_input(ctx.args.file)
    except InputError as exc:
        print(f"imip-gateway send: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with open_services(ctx.settings) as services:
        try:
            journal_id, outcomes = services.send(raw)
        except Exception:
            log.exception("send failed")
            return EXIT_FAILURE
    if ctx.args.json:
        print_json({"journal_id": journal_id, "outcomes": outcomes})
    else:
        print(f"journal {journal_id}")
        print_table(outcomes, _COLUMNS)
    refused = not outcomes or all(o.get("outcome") not in ("applied", "recorded") for o in outcomes)
    return EXIT_CONFIG if refused else EXIT_OK


def counter_cmd(ctx: Context) -> int:
    from gateway.app import open_services

    with open_services(ctx.settings) as services:
        try:
            decision = services.counter(
                ctx.args.uid,
                ctx.args.owner,
                ctx.args.id,
                accept=ctx.args.accept,
                comment=ctx.args.comment,
            )
        except Exception:
            log.exception("counter %s failed", "accept" if ctx.args.accept else "decline")
            return EXIT_FAILURE
    print(f"{decision.outcome.value}: {decision.reason}")
    for out in decision.outgoing:
        print(f"  queued {out.method} to {', '.join(out.recipients)}")
    return EXIT_OK if decision.outcome.value in ("applied", "recorded") else EXIT_CONFIG
