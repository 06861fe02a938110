"""Property: replies applied in any order end in the same state (RFC 5546 section 2.1.5).

Several attendees, several instances (series and overrides), several SEQUENCE and
DTSTAMP values: each REPLY's Decision is applied to an in-memory copy
(:func:`gateway.domain.apply.apply_changes`) before the next one is processed.  The
per-attendee, per-instance ordering must make the final answers independent of the
delivery order.  Compared is the *effective* answer of each attendee for each
instance (the override's row when the instance has one, else the series row): an
instance reply that turns out stale never creates an override, so which overrides
exist may differ while every answer is the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import organizer
from gateway.domain.model import Outcome, StoredObject
from tests.domain.helpers import org_apply, org_context, org_message, org_stored

EVENT = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
BEGIN:VEVENT
UID:prop@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DTSTART:20260302T090000Z
DTEND:20260302T100000Z
RRULE:FREQ=DAILY;COUNT=5
SUMMARY:Daily
SEQUENCE:2
DTSTAMP:20260201T080000Z
END:VEVENT
END:VCALENDAR
"""

ATTENDEES = ("b@example.com", "c@example.com", "d@example.com")
KEYS = ("", "20260303T090000Z", "20260305T090000Z")
BASE = datetime(2026, 2, 10, tzinfo=UTC)

Reply = tuple[str, str, int, int, str]  # attendee, instance key, SEQUENCE, hour, PARTSTAT

replies = st.lists(
    st.tuples(
        st.sampled_from(ATTENDEES),
        st.sampled_from(KEYS),
        st.integers(min_value=1, max_value=3),  # 1 is older than the event's SEQUENCE 2
        st.integers(min_value=0, max_value=5),
        st.sampled_from(("ACCEPTED", "DECLINED", "TENTATIVE")),
    ),
    min_size=1,
    max_size=10,
    # A client never sends two different answers with the same SEQUENCE and DTSTAMP.
    unique_by=lambda r: (r[0], r[1], r[2], r[3]),
)


def _text(r: Reply) -> str:
    who, key, seq, hour, partstat = r
    stamp = (BASE + timedelta(hours=hour)).strftime("%Y%m%dT%H%M%SZ")
    rid = f"RECURRENCE-ID:{key}\n" if key else ""
    return f"""
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:prop@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT={partstat}:mailto:{who}
{rid}SEQUENCE:{seq}
DTSTAMP:{stamp}
END:VEVENT
END:VCALENDAR
"""


def _replay(sequence: list[Reply]) -> StoredObject:
    stored = org_stored(EVENT)
    for r in sequence:
        decision = organizer.process(org_message(_text(r)), stored, org_context(sender=r[0]))
        assert decision.outcome in (
            Outcome.APPLIED,
            Outcome.IGNORED_STALE,
            Outcome.DUPLICATE,
        ), decision.reason
        stored = org_apply(stored, decision)
    return stored


def _effective(stored: StoredObject) -> dict[tuple[str, str], tuple[object, ...]]:
    out: dict[tuple[str, str], tuple[object, ...]] = {}
    for key in KEYS:
        source = key if key in stored.instances else ""
        for who in ATTENDEES:
            row = stored.attendees[(source, who)]
            out[(key, who)] = (row.partstat, row.reply_sequence, row.reply_dtstamp)
    return out


@settings(max_examples=60, deadline=None)
@given(replies, st.randoms(use_true_random=False))
def test_shuffled_replies_end_in_the_same_state_as_ordered_ones(
    sequence: list[Reply], rnd: object
) -> None:
    ordered = sorted(sequence, key=lambda r: (r[2], r[3]))
    shuffled = list(sequence)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert _effective(_replay(shuffled)) == _effective(_replay(ordered))


@settings(max_examples=30, deadline=None)
@given(replies)
def test_replaying_every_reply_twice_changes_nothing(sequence: list[Reply]) -> None:
    once = _replay(sequence)
    twice = _replay(sequence + sequence)
    assert _effective(twice) == _effective(once)
    assert twice.instances.keys() == once.instances.keys()
