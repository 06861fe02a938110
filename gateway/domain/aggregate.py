"""Reply aggregation for the organiser (``imip-gateway replies UID``).

Pure: from a complete :class:`~gateway.domain.model.StoredObject` to typed summaries
the CLI prints or dumps as JSON.  Per instance (the series and each override):
counts per PARTSTAT (RFC 5545 section 3.2.12), who has not answered (NEEDS-ACTION),
delegations (RFC 5546 section 2.1.2: who to whom), each attendee's last applied REPLY
SEQUENCE/DTSTAMP (section 2.1.5), and where an instance's answers differ from the
series (section 3.7.1: per-instance participation status).  Pending COUNTER
proposals (section 3.2.7) and other held items come from ``stored.held``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from gateway.domain.addresses import normalise
from gateway.domain.ical import parse_one
from gateway.domain.model import AttendeeState, HeldItem, StoredObject
from gateway.domain.state import attendees_of, percent_complete
from gateway.domain.timeutil import format_utc

__all__ = [
    "AttendeeSummary",
    "CounterSummary",
    "Delegation",
    "InstanceSummary",
    "ReplySummary",
    "aggregate",
]

PARTSTATS = ("ACCEPTED", "TENTATIVE", "DECLINED", "DELEGATED", "NEEDS-ACTION")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class AttendeeSummary:
    address: str
    partstat: str
    role: str
    cutype: str
    rsvp: bool
    delegated_to: tuple[str, ...] = ()
    delegated_from: tuple[str, ...] = ()
    member: tuple[str, ...] = ()
    reply_sequence: int | None = None
    reply_dtstamp: datetime | None = None
    replied_at: datetime | None = None
    request_status: str = ""
    percent_complete: int | None = None  # a VTODO attendee's progress (RFC 5546 3.4.3)


@dataclass(frozen=True)
class Delegation:
    delegator: str
    delegate: str
    delegate_partstat: str


@dataclass(frozen=True)
class InstanceSummary:
    key: str  # "" = the series
    start: datetime | None
    sequence: int
    status: str
    cancelled: bool
    counts: dict[str, int]
    not_answered: tuple[str, ...]
    delegations: tuple[Delegation, ...]
    attendees: tuple[AttendeeSummary, ...]
    # addresses whose PARTSTAT here differs from their series PARTSTAT
    differs_from_series: tuple[str, ...] = ()


@dataclass(frozen=True)
class CounterSummary:
    held_id: int
    proposer: str
    instance_key: str
    sequence: int
    dtstamp: datetime | None
    proposed: dict[str, str] = field(default_factory=dict)  # DTSTART/DTEND/LOCATION...
    comment: str = ""


@dataclass(frozen=True)
class ReplySummary:
    uid: str
    owner: str
    organizer: str
    summary: str
    sequence: int
    series: InstanceSummary | None
    instances: tuple[InstanceSummary, ...]
    differing_instances: tuple[str, ...]
    counters: tuple[CounterSummary, ...]
    held: dict[str, int]  # other held items by kind (early-reply, party-crasher, ...)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as RFC 5545 UTC text)."""
        data: dict[str, Any] = _jsonable(asdict(self))
        return data


def _attendee(row: AttendeeState) -> AttendeeSummary:
    return AttendeeSummary(
        address=row.address,
        partstat=row.partstat,
        role=row.role,
        cutype=row.cutype,
        rsvp=row.rsvp,
        delegated_to=row.delegated_to,
        delegated_from=row.delegated_from,
        member=row.member,
        reply_sequence=row.reply_sequence,
        reply_dtstamp=row.reply_dtstamp,
        replied_at=row.replied_at,
        request_status=row.request_status,
        percent_complete=percent_complete(row),
    )


def _instance(stored: StoredObject, key: str, organizer: str) -> InstanceSummary:
    inst = stored.instances[key]
    rows = attendees_of(stored.attendees, key)
    counts = dict.fromkeys(PARTSTATS, 0)
    for row in rows:
        counts[row.partstat] = counts.get(row.partstat, 0) + 1
    by_address = {r.address: r for r in rows}
    delegations = tuple(
        Delegation(
            row.address,
            delegate,
            by_address[delegate].partstat if delegate in by_address else "UNKNOWN",
        )
        for row in rows
        for delegate in row.delegated_to
    )
    not_answered = tuple(
        r.address for r in rows if r.partstat == "NEEDS-ACTION" and r.address != organizer
    )
    differs: tuple[str, ...] = ()
    if key:
        series = {r.address: r.partstat for r in attendees_of(stored.attendees, "")}
        differs = tuple(
            r.address for r in rows if r.address in series and series[r.address] != r.partstat
        )
    return InstanceSummary(
        key=key,
        start=inst.start,
        sequence=inst.sequence,
        status=inst.status,
        cancelled=inst.cancelled,
        counts=counts,
        not_answered=not_answered,
        delegations=delegations,
        attendees=tuple(_attendee(r) for r in rows),
        differs_from_series=differs,
    )


def _counter(item: HeldItem) -> CounterSummary:
    proposed: dict[str, str] = {}
    comment = ""
    try:
        cal = parse_one(item.payload)
    except ValueError:
        cal = None
    if cal is not None:
        comp = next((c for c in cal.components if c.name != "VTIMEZONE"), None)
        if comp is not None:
            for name in ("DTSTART", "DTEND", "DURATION", "DUE", "LOCATION", "SUMMARY"):
                prop = comp.get(name)
                if prop is not None:
                    tzid = prop.param("TZID")
                    proposed[name] = prop.text + (f" ({tzid})" if tzid else "")
            comment = comp.text("COMMENT")
    return CounterSummary(
        held_id=item.id,
        proposer=item.sender,
        instance_key=item.instance_key,
        sequence=item.sequence,
        dtstamp=item.dtstamp,
        proposed=proposed,
        comment=comment,
    )


def aggregate(stored: StoredObject) -> ReplySummary:
    """Summarise the answers to the organiser's event (needs every attendee row)."""
    organizer = normalise(stored.header.organizer)
    series = _instance(stored, "", organizer) if "" in stored.instances else None
    instances = tuple(
        _instance(stored, key, organizer) for key in sorted(k for k in stored.instances if k)
    )
    held: dict[str, int] = {}
    for item in stored.held:
        if item.kind != "counter":
            held[item.kind] = held.get(item.kind, 0) + 1
    return ReplySummary(
        uid=stored.header.uid,
        owner=stored.header.owner,
        organizer=organizer,
        summary=stored.header.summary,
        sequence=stored.header.sequence,
        series=series,
        instances=instances,
        differing_instances=tuple(i.key for i in instances if i.differs_from_series),
        counters=tuple(_counter(h) for h in stored.held if h.kind == "counter"),
        held=held,
    )
