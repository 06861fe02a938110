"""``imip-gateway events``, ``replies`` and ``messages``: what the gateway knows.

* ``events list|show``: the owner's copy of each event per instance, with every
  attendee's PARTSTAT, delegation, last reply SEQUENCE/DTSTAMP, pending COUNTERs and
  held messages;
* ``replies UID``: the organiser's aggregation (counts per PARTSTAT, who has not
  answered, per instance where answers differ);
* ``messages list|show``: the journal with outcomes and reasons.
"""

from __future__ import annotations

from gateway.cli.base import EXIT_CONFIG, EXIT_OK, Context, Subparsers, add_command
from gateway.cli.output import print_json, print_table

_EXITS = "\n\nexit codes: 0 done, 1 database error, 2 usage error or nothing found."


def register(subparsers: Subparsers) -> None:
    events = add_command(
        subparsers,
        "events",
        None,
        help="list or show stored scheduling objects",
        description="Inspect the calendar store." + _EXITS,
    )
    sub = events.add_subparsers(title="events commands", metavar="COMMAND")
    lst = add_command(
        sub, "list", events_list, help="one line per event", description="List events." + _EXITS
    )
    lst.add_argument("--owner", metavar="ADDR", help="only this local user's copies")
    lst.add_argument("--limit", type=int, default=100)
    lst.add_argument("--json", action="store_true")
    show = add_command(
        sub,
        "show",
        events_show,
        help="one event in full",
        description="Show an event per instance with every attendee's state." + _EXITS,
    )
    show.add_argument("uid")
    show.add_argument("--owner", metavar="ADDR", help="only this local user's copy")
    show.add_argument("--json", action="store_true")

    replies = add_command(
        subparsers,
        "replies",
        replies_cmd,
        help="the organiser's reply aggregation for one event",
        description="Counts per PARTSTAT, who has not answered, delegations, pending"
        " COUNTER proposals, per instance where the answers differ." + _EXITS,
    )
    replies.add_argument("uid")
    replies.add_argument("--owner", metavar="ADDR", help="the organiser (a local user)")
    replies.add_argument("--json", action="store_true")

    messages = add_command(
        subparsers,
        "messages",
        None,
        help="the journal of inbound messages and their outcomes",
        description="Inspect the journal." + _EXITS,
    )
    msub = messages.add_subparsers(title="messages commands", metavar="COMMAND")
    mlist = add_command(
        msub, "list", messages_list, help="newest first", description="List messages." + _EXITS
    )
    mlist.add_argument(
        "--status", choices=("pending", "processing", "done", "quarantined"), default=None
    )
    mlist.add_argument("--limit", type=int, default=50)
    mlist.add_argument("--json", action="store_true")
    mshow = add_command(
        msub,
        "show",
        messages_show,
        help="one message with its outcomes",
        description="Show one journal row with every per-part outcome." + _EXITS,
    )
    mshow.add_argument("id", type=int)
    mshow.add_argument("--raw", action="store_true", help="include the raw message")
    mshow.add_argument("--json", action="store_true")


def events_list(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        rows = services.store.read_sync(queries.event_list, ctx.args.owner, limit=ctx.args.limit)
    if ctx.args.json:
        print_json(rows)
    else:
        print_table(rows, ("owner", "uid", "role", "sequence", "status", "summary", "updated_at"))
    return EXIT_OK


def events_show(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        found = services.store.read_sync(queries.event_detail, ctx.args.uid, ctx.args.owner)
    if not found:
        print(f"no event with UID {ctx.args.uid!r}")
        return EXIT_CONFIG
    if ctx.args.json:
        print_json(found)
        return EXIT_OK
    for obj in found:
        print(
            f"{obj['uid']}  owner={obj['owner']}  role={obj['role']}  "
            f"organizer={obj['organizer']}  sequence={obj['sequence']}  status={obj['status']}"
        )
        for inst in obj["instances"]:
            label = inst["recurrence_id"] or "series"
            print(
                f"  [{label}] {inst['summary'] or ''}  start={inst['start']}  "
                f"sequence={inst['sequence']}  cancelled={inst['cancelled']}"
            )
            print_table(
                inst["attendees"],
                (
                    "address",
                    "partstat",
                    "role",
                    "delegated_to",
                    "delegated_from",
                    "reply_sequence",
                    "reply_dtstamp",
                    "schedule_status",
                ),
            )
        if obj["held"]:
            print("  held:")
            print_table(obj["held"], ("id", "kind", "method", "sender", "recurrence_id"))
    return EXIT_OK


def replies_cmd(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        stored = services.store.read_sync(queries.load_for_owner, ctx.args.uid, ctx.args.owner)
    report = [services.aggregate(obj) for obj in stored]
    if not report:
        print(f"no event with UID {ctx.args.uid!r}")
        return EXIT_CONFIG
    if ctx.args.json:
        print_json(report)
        return EXIT_OK
    for item in report:
        _print_aggregate(item)
    return EXIT_OK


def _print_aggregate(item: dict[str, object]) -> None:
    print(
        f"{item.get('uid')}  organizer={item.get('organizer')}  owner={item.get('owner')}"
        f"  sequence={item.get('sequence')}  {item.get('summary') or ''}"
    )
    blocks: list[object] = [item.get("series")]
    instances = item.get("instances")
    if isinstance(instances, list):
        blocks += instances
    for inst in blocks:
        if not isinstance(inst, dict):
            continue
        label = inst.get("key") or "series"
        counts = inst.get("counts") or {}
        summary = ", ".join(f"{k}={v}" for k, v in sorted(dict(counts).items()))
        differs = "  (differs from the series)" if inst.get("differs_from_series") else ""
        print(f"  [{label}] {summary}{differs}")
        waiting = inst.get("not_answered") or []
        if waiting:
            print(f"    not answered: {', '.join(map(str, waiting))}")
        for d in inst.get("delegations") or []:
            if isinstance(d, dict):
                print(f"    delegated: {d.get('delegator')} -> {d.get('delegate')}")
            else:
                print(f"    delegated: {d}")
    counters = item.get("counters") or []
    if isinstance(counters, list) and counters:
        print(f"  pending COUNTER proposals: {len(counters)} (imip-gateway counter accept|decline)")


def messages_list(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        rows = services.store.read_sync(
            queries.message_list, limit=ctx.args.limit, status=ctx.args.status
        )
    if ctx.args.json:
        print_json(rows)
    else:
        print_table(
            rows, ("id", "received_at", "source", "envelope_from", "status", "outcome", "reason")
        )
    return EXIT_OK


def messages_show(ctx: Context) -> int:
    from gateway.app import open_services
    from gateway.services import queries

    with open_services(ctx.settings) as services:
        detail = services.store.read_sync(
            queries.message_detail, ctx.args.id, with_raw=ctx.args.raw
        )
    if detail is None:
        print(f"no message {ctx.args.id}")
        return EXIT_CONFIG
    if ctx.args.json:
        print_json(detail)
        return EXIT_OK
    for key in (
        "id",
        "message_id",
        "source",
        "envelope_from",
        "envelope_to",
        "received_at",
        "status",
        "outcome",
        "reason",
        "attempts",
    ):
        print(f"{key}: {detail.get(key)}")
    print_table(
        detail["outcomes"],
        ("part", "recipient", "method", "uid", "recurrence_id", "outcome", "reason"),
    )
    if ctx.args.raw:
        print(detail.get("raw", ""))
    return EXIT_OK
