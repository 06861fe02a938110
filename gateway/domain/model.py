"""Values the iTIP engine takes and returns (ARCHITECTURE.md section 2: sans-I/O).

``process(message, stored, context) -> Decision``: the service loads a
:class:`StoredObject` (only the rows the message needs), the engine decides, and the
service applies the :class:`Decision`'s changes, outgoing messages and held items in
ONE transaction together with the journal outcome.

Storage model (why it looks like this): an event is kept as its instances (master
under key ``""`` plus overrides keyed by :func:`gateway.domain.timeutil.instance_key`)
whose component text excludes ATTENDEE lines, and one :class:`AttendeeState` per
(instance, attendee).  A REPLY therefore changes one attendee row and never
re-serialises a large event (issue 3 performance note).  Every override owns a full
copy of its attendees, so rendering an instance never needs to merge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.domain.ical import Component, Property
from gateway.domain.identity import SenderIdentity

__all__ = [
    "METHODS",
    "AttendeeState",
    "BookingRules",
    "BusyPeriod",
    "Change",
    "Context",
    "Decision",
    "DeleteAttendee",
    "DeleteInstance",
    "DeleteObject",
    "HoldRequest",
    "ITipMessage",
    "Method",
    "ObjectHeader",
    "Outcome",
    "OutgoingMessage",
    "PutAttendee",
    "PutInstance",
    "PutObject",
    "ReleaseHeld",
    "ReplaceBusy",
    "ResolveHeld",
    "Role",
    "StoredInstance",
    "StoredObject",
    "UserPolicy",
]


class Method(StrEnum):
    """iTIP methods (RFC 5546 section 1.4)."""

    PUBLISH = "PUBLISH"
    REQUEST = "REQUEST"
    REPLY = "REPLY"
    ADD = "ADD"
    CANCEL = "CANCEL"
    REFRESH = "REFRESH"
    COUNTER = "COUNTER"
    DECLINECOUNTER = "DECLINECOUNTER"


METHODS = frozenset(m.value for m in Method)


class Role(StrEnum):
    """Which side of the scheduling relationship the local owner is on."""

    ORGANIZER = "organizer"
    ATTENDEE = "attendee"


class Outcome(StrEnum):
    """The one recorded outcome of a calendar part (ARCHITECTURE.md section 1)."""

    APPLIED = "applied"
    IGNORED_STALE = "ignored-stale"  # RFC 5546 section 2.1.5: older SEQUENCE/DTSTAMP
    DUPLICATE = "duplicate"  # same SEQUENCE and DTSTAMP already applied
    REJECTED_UNAUTHORISED = "rejected-unauthorised"
    REJECTED_INVALID = "rejected-invalid"  # violates section 3 restriction tables
    HELD_PENDING = "held-pending"  # section 5.2.1: arrived before what it refers to
    QUARANTINED_INVALID = "quarantined-invalid"  # cannot be parsed at all
    IGNORED_NO_CALENDAR = "ignored-no-calendar"
    IGNORED_NOT_LOCAL = "ignored-not-local"
    IGNORED_UNKNOWN = "ignored-unknown"  # refers to an object we do not have
    IGNORED_LOOP = "ignored-loop"  # our own message or an auto-reply loop (RFC 3834)
    IGNORED_POLICY = "ignored-policy"  # e.g. party crasher with policy "ignore"
    IGNORED_UNSUPPORTED = "ignored-unsupported"
    RECORDED = "recorded"  # stored for the user to act on (manual policy, COUNTER)


# --- policies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookingRules:
    """Resource booking rules for rooms and equipment (issue 3)."""

    window_days: int = 0  # 0 = unlimited; a start later than now + window is declined
    max_duration_minutes: int = 0  # 0 = unlimited
    allow_recurring: bool = True
    max_conflicting_instances: int = 0  # series: decline when more instances conflict
    max_conflict_percent: float = 0.0  # ... or more than this share (0 = none allowed)
    allowed_organizers: tuple[str, ...] = ()  # addresses or "@domain"; empty = anyone


@dataclass(frozen=True, slots=True)
class UserPolicy:
    """How the gateway acts for one local calendar user."""

    address: str
    display_name: str = ""
    kind: str = "person"  # person | room | resource
    policy: str = "manual"  # manual | accept | decline | accept-if-free | tentative
    party_crashers: str = "hold"  # accept | ignore | hold
    booking: BookingRules | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BusyPeriod:
    """A busy interval of the local user, from the store (for free/busy decisions)."""

    start: datetime
    end: datetime
    fbtype: str = "BUSY"
    uid: str = ""


@dataclass(frozen=True)
class Context:
    """Everything the engine may know beyond the message and the stored object.

    ``busy`` holds the owner's busy periods for the window returned by
    :func:`gateway.domain.engine.busy_window` (loaded by the service only when the
    policy needs them).  ``now`` is injected: the domain never reads the clock.
    """

    owner: UserPolicy
    sender: SenderIdentity
    now: datetime
    significant: frozenset[str] = frozenset(
        {"DTSTART", "DTEND", "DURATION", "DUE", "RRULE", "RDATE", "EXDATE", "STATUS", "LOCATION"}
    )
    busy: tuple[BusyPeriod, ...] = ()
    max_instances: int = 1000
    max_attendees: int = 2000
    prodid: str = "-//imip-gateway//imip-gateway 0.1//EN"
    is_local: Callable[[str], bool] = field(default=lambda _addr: False)


# --- the inbound message -----------------------------------------------------------


@dataclass
class ITipMessage:
    """One parsed iTIP message: a VCALENDAR whose components share one UID.

    ``components`` are the scheduling components (VEVENT/VTODO/VJOURNAL/VFREEBUSY) in
    document order; ``timezones`` the VTIMEZONEs; ``warnings`` anything lenient parsing
    let through (recorded with the outcome).
    """

    method: str
    component_type: str
    uid: str
    calendar: Component
    components: list[Component]
    timezones: list[Component] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The section 3 check of the message as received (violations, warnings), kept by
    # gateway.domain.validate.validated: done once, and possibly before the write
    # transaction (issue 5), not once per recipient inside it.
    checked: tuple[tuple[Any, ...], tuple[str, ...]] | None = field(
        default=None, compare=False, repr=False
    )


# --- stored state as the engine sees it -----------------------------------------------


@dataclass
class StoredInstance:
    """The master (``key == ""``) or one override of a scheduling object."""

    key: str
    component: Component  # without ATTENDEE properties
    sequence: int = 0
    dtstamp: datetime | None = None
    this_and_future: bool = False
    cancelled: bool = False
    start: datetime | None = None  # UTC, for listing and free/busy
    end: datetime | None = None
    status: str = ""
    transp: str = ""

    @classmethod
    def deferred(
        cls,
        load: Callable[[], Component],
        *,
        key: str,
        sequence: int,
        dtstamp: datetime | None,
        this_and_future: bool,
        cancelled: bool,
        start: datetime | None,
        end: datetime | None,
        status: str,
        transp: str,
    ) -> StoredInstance:
        """An instance whose component is built by ``load`` on first use.

        The store reads every stored instance of an object, but most messages never
        look at the components: a REPLY to a known instance needs only its SEQUENCE
        and the attendee row (issue 5: parsing the stored text was ~12% of a REPLY).
        Reading ``component`` (also through ``==``, ``repr`` or ``dataclasses.replace``)
        loads it once; the instance then behaves exactly like an eager one.
        """
        instance = cls(
            key,
            _DEFERRED,
            sequence,
            dtstamp,
            this_and_future,
            cancelled,
            start,
            end,
            status,
            transp,
        )
        instance.__dict__["_load"] = load
        return instance


# The component slot of a deferred instance until it is read (see ``deferred``).
_DEFERRED = Component("X-DEFERRED")


def _get_component(self: StoredInstance) -> Component:
    component: Component = self.__dict__["_component"]
    if component is _DEFERRED:
        component = self.__dict__.pop("_load")()
        self.__dict__["_component"] = component
    return component


def _set_component(self: StoredInstance, component: Component) -> None:
    self.__dict__.pop("_load", None)
    self.__dict__["_component"] = component


# After @dataclass has generated __init__/__eq__/__repr__ (which all go through the
# attribute), the field becomes a property so that ``deferred`` can postpone the parse.
setattr(StoredInstance, "component", property(_get_component, _set_component))  # noqa: B010


@dataclass
class AttendeeState:
    """One attendee of one instance (``instance_key == ""`` = the series).

    ``reply_sequence``/``reply_dtstamp`` are the SEQUENCE and DTSTAMP of the last
    REPLY applied for this attendee and instance (RFC 5546 section 2.1.5): a REPLY that
    is not newer is discarded as stale.
    """

    instance_key: str
    address: str
    prop: Property  # the full ATTENDEE line as last received or sent
    partstat: str = "NEEDS-ACTION"
    role: str = "REQ-PARTICIPANT"
    rsvp: bool = False
    cutype: str = "INDIVIDUAL"
    delegated_to: tuple[str, ...] = ()
    delegated_from: tuple[str, ...] = ()
    sent_by: str = ""
    member: tuple[str, ...] = ()
    request_status: str = ""
    schedule_status: str = ""
    reply_sequence: int | None = None
    reply_dtstamp: datetime | None = None
    replied_at: datetime | None = None


@dataclass
class ObjectHeader:
    """Per-object facts kept in their own row (cheap to read and update)."""

    owner: str
    uid: str
    component_type: str
    role: Role
    organizer: str
    organizer_sent_by: str = ""
    sequence: int = 0
    dtstamp: datetime | None = None
    status: str = ""
    summary: str = ""
    is_recurring: bool = False
    calendar_props: list[Property] = field(default_factory=list)
    timezones: list[Component] = field(default_factory=list)


@dataclass
class StoredObject:
    """The owner's copy of one scheduling object, as loaded for a decision.

    ``attendees`` may be partial: for a REPLY the service loads only the rows of the
    addresses the message names (``attendees_complete`` is then False).  Keys are
    ``(instance_key, address)``.
    """

    header: ObjectHeader
    instances: dict[str, StoredInstance] = field(default_factory=dict)
    attendees: dict[tuple[str, str], AttendeeState] = field(default_factory=dict)
    attendees_complete: bool = True
    held: list[HeldItem] = field(default_factory=list)


@dataclass(frozen=True)
class HeldItem:
    """A stored held message (early CANCEL/REPLY, COUNTER proposal, ...)."""

    id: int
    kind: str
    sender: str
    method: str
    payload: str
    instance_key: str = ""
    sequence: int = 0
    dtstamp: datetime | None = None


# --- the decision ---------------------------------------------------------------------


@dataclass(frozen=True)
class PutObject:
    """Create or update the object header."""

    header: ObjectHeader


@dataclass(frozen=True)
class DeleteObject:
    """Remove the whole object (e.g. attendee-side CANCEL of a series is a status
    change, not a delete; this is used when the owner's copy must disappear)."""

    owner: str
    uid: str


@dataclass(frozen=True)
class PutInstance:
    instance: StoredInstance


@dataclass(frozen=True)
class DeleteInstance:
    key: str


@dataclass(frozen=True)
class PutAttendee:
    attendee: AttendeeState


@dataclass(frozen=True)
class DeleteAttendee:
    instance_key: str
    address: str


@dataclass(frozen=True)
class ReplaceBusy:
    """Replace the object's precomputed busy periods (bounded expansion)."""

    periods: tuple[BusyPeriod, ...]


@dataclass(frozen=True)
class ResolveHeld:
    """Mark a held item resolved (applied, superseded, declined...)."""

    held_id: int
    resolution: str


Change = (
    PutObject
    | DeleteObject
    | PutInstance
    | DeleteInstance
    | PutAttendee
    | DeleteAttendee
    | ReplaceBusy
    | ResolveHeld
)


@dataclass(frozen=True)
class ReleaseHeld:
    """Ask the service to re-run held items of this object after the change commits
    (section 5.2.1: a CANCEL/REPLY that arrived before its REQUEST)."""

    owner: str
    uid: str


@dataclass(frozen=True)
class HoldRequest:
    """Keep this message for later (early arrival, COUNTER proposal, unknown delegate)."""

    # early-cancel | early-reply | unknown-delegate | party-crasher | counter | organizer-change
    kind: str
    instance_key: str
    sender: str
    method: str
    payload: str  # the iCalendar text of the part
    sequence: int = 0
    dtstamp: datetime | None = None


@dataclass(frozen=True)
class OutgoingMessage:
    """An iTIP message to send; the service composes the iMIP mail (RFC 6047).

    ``calendar`` is the complete VCALENDAR (METHOD set, VTIMEZONEs included).
    ``answering`` is true when it answers the inbound mail (In-Reply-To is set).
    ``subject_kind`` selects the subject line ("accepted", "declined", "tentative",
    "delegated", "invitation", "updated", "cancelled", "counter", "declinecounter",
    "refresh", "freebusy", "status").  ``auto`` is true when the gateway decided on
    its own (Auto-Submitted: auto-replied) rather than on an operator's command.
    """

    method: str
    sender: str  # the local user it is sent as
    recipients: tuple[str, ...]
    calendar: Component
    uid: str
    instance_key: str = ""
    subject_kind: str = "status"
    summary: str = ""
    answering: bool = False
    auto: bool = True
    changes: tuple[str, ...] = ()  # human-readable "what changed" lines


@dataclass
class Decision:
    """What the engine decided for one message and one local owner."""

    outcome: Outcome
    reason: str
    changes: list[Change] = field(default_factory=list)
    outgoing: list[OutgoingMessage] = field(default_factory=list)
    hold: list[HoldRequest] = field(default_factory=list)
    release: list[ReleaseHeld] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recurrence_id: str = ""  # the instance key the message was about ("" = series)
