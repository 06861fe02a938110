"""The iTIP engine's entry points: pure functions, values in, decision out.

The service layer calls, per calendar part and local recipient:

1. :func:`gateway.domain.message.parse_itip` - text to :class:`ITipMessage` values;
2. :func:`load_plan` - which stored rows the decision needs (a REPLY to a
   1000-attendee event loads one attendee row, not a thousand);
3. :func:`busy_window` - the time range of busy periods to load, when the owner's
   policy looks at free/busy time;
4. :func:`process` - the decision, applied by the service in one transaction.

Roles (RFC 5546 section 1.4 and issue 3): for a message to a local user the gateway
acts as that user's calendar agent - as attendee for REQUEST, ADD, CANCEL,
DECLINECOUNTER and PUBLISH, and as organiser for REPLY, REFRESH and COUNTER.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gateway.domain import attendee, organizer
from gateway.domain.model import Context, Decision, ITipMessage, Method, StoredObject

__all__ = ["LoadPlan", "busy_window", "load_plan", "process"]

ATTENDEE_METHODS = frozenset(
    {Method.REQUEST, Method.ADD, Method.CANCEL, Method.DECLINECOUNTER, Method.PUBLISH}
)
ORGANIZER_METHODS = frozenset({Method.REPLY, Method.REFRESH, Method.COUNTER})


@dataclass(frozen=True)
class LoadPlan:
    """What to load for a decision.

    ``attendee_addresses`` None means every attendee row of the object; otherwise only
    those addresses' rows (all instances).  ``held`` asks for the object's held items.
    """

    attendee_addresses: frozenset[str] | None = None
    held: bool = False


def load_plan(msg: ITipMessage, owner: str) -> LoadPlan:
    """Which stored rows :func:`process` needs for ``msg`` addressed to ``owner``."""
    if msg.method in ORGANIZER_METHODS:
        return organizer.load_plan(msg, owner)
    return attendee.load_plan(msg, owner)


def busy_window(msg: ITipMessage, ctx: Context) -> tuple[datetime, datetime] | None:
    """The UTC range of the owner's busy time the decision looks at, or None."""
    if msg.method in ORGANIZER_METHODS:
        return None
    return attendee.busy_window(msg, ctx)


def process(msg: ITipMessage, stored: StoredObject | None, ctx: Context) -> Decision:
    """Decide what ``msg`` means for the local owner ``ctx.owner``."""
    if msg.method in ORGANIZER_METHODS:
        return organizer.process(msg, stored, ctx)
    return attendee.process(msg, stored, ctx)
