"""``imip-gateway held list|accept|discard``: operator decisions on held messages.

Held items are iTIP messages the gateway set aside rather than drop: a REPLY from
someone who was not invited (party crasher, RFC 5546 3.2.2.6) under the "hold"
policy, a REPLY/CANCEL that arrived before its REQUEST (5.2.1), COUNTER proposals
(3.2.7) and ORGANIZER changes (6.1.3).  See :mod:`gateway.services.held`.
"""

from __future__ import annotations

import logging

from gateway.cli.base import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, Context, Subparsers, add_command
from gateway.cli.output import print_json, print_table

log = logging.getLogger(__name__)

_COLUMNS = ("id", "owner", "kind", "method", "sender", "uid", "recurrence_id", "created_at")


def register(subparsers: Subparsers) -> None:
    group = add_command(
        subparsers,
        "held",
        None,
        help="list, accept or discard held messages (party crashers, early replies...)",
        description="Messages the gateway set aside instead of applying them: replies from"
        " uninvited attendees (party crashers, RFC 5546 section 3.2.2.6), replies and"
        " cancellations that arrived before their invitation (section 5.2.1), COUNTER"
        " proposals (section 3.2.7) and organiser changes (section 6.1.3).",
    )
    sub = group.add_subparsers(title="held commands", metavar="COMMAND")
    listing = add_command(
        sub,
        "list",
        list_cmd,
        help="show held items, oldest first",
        description="Show the unresolved held items, oldest first.\n\nexit codes: 0 listed,"
        " 1 the gateway failed.",
    )
    listing.add_argument("--owner", metavar="ADDR", help="only this local user's items")
    listing.add_argument("--all", action="store_true", help="include resolved items")
    listing.add_argument("--json", action="store_true")

    accept = add_command(
        sub,
        "accept",
        accept_cmd,
        help="apply a held item",
        description="Apply a held item: a party crasher's REPLY is applied as if the owner's"
        " policy were 'accept' (the attendee is added with their answer); an early"
        " REPLY/CANCEL/ADD or an unknown delegate's REPLY is processed again now that its"
        " event exists.  COUNTER proposals are answered with `imip-gateway counter`."
        "\n\nexit codes: 0 applied (or resolved by the engine's outcome), 1 the gateway"
        " failed, 2 no such pending item, refused, or still waiting for its event.",
    )
    accept.add_argument("id", type=int, help="the held item's id (from `held list`)")
    accept.add_argument("--json", action="store_true")

    discard = add_command(
        sub,
        "discard",
        discard_cmd,
        help="resolve a held item without applying it",
        description="Close a held item without applying it; the reason is recorded with the"
        " item and on the journal row it came in with.\n\nexit codes: 0 discarded,"
        " 1 the gateway failed, 2 no such pending item.",
    )
    discard.add_argument("id", type=int, help="the held item's id (from `held list`)")
    discard.add_argument("--reason", default="", metavar="TEXT", help="why it is discarded")
    discard.add_argument("--json", action="store_true")


def list_cmd(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services.held import HeldService

    with open_services(ctx.settings) as services:
        try:
            items = HeldService(services).list(ctx.args.owner, include_resolved=ctx.args.all)
        except Exception:
            log.exception("held list failed")
            return EXIT_FAILURE
    if ctx.args.json:
        print_json(items)
    else:
        print_table(items, _COLUMNS + (("resolution",) if ctx.args.all else ()))
    return EXIT_OK


def accept_cmd(ctx: Context) -> int:
    return _decide(ctx, accept=True)


def discard_cmd(ctx: Context) -> int:
    return _decide(ctx, accept=False)


def _decide(ctx: Context, *, accept: bool) -> int:
    from gateway.app import open_services
    from gateway.services.held import HeldService

    with open_services(ctx.settings) as services:
        service = HeldService(services)
        try:
            if accept:
                result = service.accept(ctx.args.id)
            else:
                result = service.discard(ctx.args.id, ctx.args.reason)
        except Exception:
            log.exception("held %s failed", "accept" if accept else "discard")
            return EXIT_FAILURE
    if ctx.args.json:
        print_json(result.as_dict())
    else:
        print(f"{result.outcome}: {result.reason}")
        for line in result.queued:
            print(f"  queued {line}")
    return EXIT_OK if result.resolved else EXIT_CONFIG
