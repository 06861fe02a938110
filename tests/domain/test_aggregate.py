"""Reply aggregation for ``imip-gateway replies UID`` (RFC 5546 sections 2.1.2, 2.1.5, 3.7.1)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.domain import organizer
from gateway.domain.aggregate import Delegation, aggregate
from gateway.domain.model import HeldItem
from tests.domain.helpers import org_apply, org_context, org_message, org_stored

EVENT = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
BEGIN:VEVENT
UID:agg@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DTSTART:20260302T090000Z
DTEND:20260302T100000Z
RRULE:FREQ=DAILY;COUNT=3
SUMMARY:Standup
SEQUENCE:1
DTSTAMP:20260201T080000Z
END:VEVENT
END:VCALENDAR
"""

COUNTER = """BEGIN:VCALENDAR\r
PRODID:-//T//EN\r
VERSION:2.0\r
METHOD:COUNTER\r
BEGIN:VEVENT\r
UID:agg@example.com\r
DTSTART:20260302T100000Z\r
LOCATION:Room 2\r
COMMENT:later please\r
END:VEVENT\r
END:VCALENDAR\r
"""


def _reply(who: str, partstat: str, rid: str = "", extra: str = "", hour: int = 10) -> str:
    rid_line = f"RECURRENCE-ID:{rid}\n" if rid else ""
    return f"""
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:agg@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT={partstat}{extra}:mailto:{who}
{rid_line}SEQUENCE:1
DTSTAMP:20260210T{hour:02d}0000Z
END:VEVENT
END:VCALENDAR
"""


def _stored():  # type: ignore[no-untyped-def]
    stored = org_stored(EVENT)
    for who, partstat, rid, extra, hour in [
        ("b@example.com", "ACCEPTED", "", "", 10),
        ("c@example.com", "DELEGATED", "", ';DELEGATED-TO="mailto:e@example.com"', 10),
        ("b@example.com", "DECLINED", "20260303T090000Z", "", 11),
    ]:
        d = organizer.process(
            org_message(_reply(who, partstat, rid, extra, hour)), stored, org_context(sender=who)
        )
        stored = org_apply(stored, d)
    stored.held = [
        HeldItem(
            5,
            "counter",
            "d@example.com",
            "COUNTER",
            COUNTER,
            "",
            1,
            datetime(2026, 2, 11, tzinfo=UTC),
        ),
        HeldItem(6, "party-crasher", "x@example.com", "REPLY", "", "", 1, None),
    ]
    return stored


def test_series_counts_not_answered_and_delegations() -> None:
    summary = aggregate(_stored())
    series = summary.series
    assert series is not None
    assert series.counts["ACCEPTED"] == 2  # a (organiser, chair) and b
    assert series.counts["DELEGATED"] == 1
    assert series.counts["NEEDS-ACTION"] == 2  # d and the delegate e
    assert series.not_answered == ("d@example.com", "e@example.com")
    assert series.delegations == (Delegation("c@example.com", "e@example.com", "NEEDS-ACTION"),)
    b = next(a for a in series.attendees if a.address == "b@example.com")
    assert (b.reply_sequence, b.reply_dtstamp) == (1, datetime(2026, 2, 10, 10, tzinfo=UTC))


def test_instances_whose_answers_differ_from_the_series_are_listed() -> None:
    summary = aggregate(_stored())
    (inst,) = summary.instances
    assert inst.key == "20260303T090000Z"
    assert inst.differs_from_series == ("b@example.com",)
    assert summary.differing_instances == ("20260303T090000Z",)
    assert inst.counts["DECLINED"] == 1


def test_pending_counters_and_other_held_items_are_reported() -> None:
    summary = aggregate(_stored())
    (counter,) = summary.counters
    assert (counter.held_id, counter.proposer) == (5, "d@example.com")
    assert counter.proposed == {"DTSTART": "20260302T100000Z", "LOCATION": "Room 2"}
    assert counter.comment == "later please"
    assert summary.held == {"party-crasher": 1}


def test_summary_dumps_to_json() -> None:
    data = aggregate(_stored()).to_dict()
    text = json.dumps(data)
    assert '"uid": "agg@example.com"' in text
    assert data["series"]["attendees"][1]["reply_dtstamp"] == "20260210T100000Z"
