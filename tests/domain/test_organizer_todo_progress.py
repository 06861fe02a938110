"""VTODO REPLY PERCENT-COMPLETE on the organiser copy (RFC 5546 3.4.3, example 4.5.4).

An attendee's REPLY to a to-do may report their progress; the organiser copy keeps
the last reported value per attendee (and instance), the aggregation shows it, and
it never leaks into the messages the organiser sends.
"""

from __future__ import annotations

from gateway.domain import organizer
from gateway.domain.aggregate import aggregate
from gateway.domain.ical import serialize
from gateway.domain.state import percent_complete
from tests.domain.helpers import org_apply, org_context, org_message, org_stored

UID = "calsrv.example.com-873970198738777-00@example.com"

TODO = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REQUEST
VERSION:2.0
BEGIN:VTODO
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;PARTSTAT=ACCEPTED;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:d@example.com
DTSTART:19970701T170000Z
DUE:19970722T170000Z
PRIORITY:1
SUMMARY:Create the requirements document
UID:{UID}
SEQUENCE:0
DTSTAMP:19970717T200000Z
STATUS:NEEDS-ACTION
END:VTODO
END:VCALENDAR
"""

# RFC 5546 4.5.4, verbatim.
REPLY_4_5_4 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VTODO
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=IN-PROCESS:mailto:b@example.com
PERCENT-COMPLETE:75
UID:{UID}
DTSTAMP:19970717T233000Z
SEQUENCE:0
END:VTODO
END:VCALENDAR
"""

# RFC 5546 4.5.5: completed, no PERCENT-COMPLETE line.
REPLY_4_5_5 = (
    REPLY_4_5_4.replace("PARTSTAT=IN-PROCESS", "PARTSTAT=COMPLETED")
    .replace("PERCENT-COMPLETE:75\n", "")
    .replace("DTSTAMP:19970717T233000Z", "DTSTAMP:19970718T080000Z")
)


def test_4_5_4_percent_complete_is_kept_per_attendee_and_shown_in_aggregation() -> None:
    stored = org_stored(TODO)
    decision = organizer.process(
        org_message(REPLY_4_5_4), stored, org_context(sender="b@example.com")
    )
    after = org_apply(stored, decision)
    b = after.attendees[("", "b@example.com")]
    assert b.partstat == "IN-PROCESS"
    assert percent_complete(b) == 75
    assert percent_complete(after.attendees[("", "d@example.com")]) is None
    summary = aggregate(after).to_dict()
    rows = {a["address"]: a for a in summary["series"]["attendees"]}
    assert rows["b@example.com"]["percent_complete"] == 75
    assert rows["d@example.com"]["percent_complete"] is None


def test_progress_stays_private_to_the_organiser_copy() -> None:
    stored = org_stored(TODO)
    after = org_apply(
        stored,
        organizer.process(org_message(REPLY_4_5_4), stored, org_context(sender="b@example.com")),
    )
    text = serialize(organizer.render_request(after, org_context(local=True)))
    assert "X-IMIP-GATEWAY" not in text
    assert "PARTSTAT=IN-PROCESS" in text


def test_a_later_reply_without_percent_complete_keeps_the_last_value() -> None:
    stored = org_stored(TODO)
    ctx = org_context(sender="b@example.com")
    stored = org_apply(stored, organizer.process(org_message(REPLY_4_5_4), stored, ctx))
    after = org_apply(stored, organizer.process(org_message(REPLY_4_5_5), stored, ctx))
    b = after.attendees[("", "b@example.com")]
    assert b.partstat == "COMPLETED"
    assert percent_complete(b) == 75  # the last value reported
    newer = REPLY_4_5_4.replace("PERCENT-COMPLETE:75", "PERCENT-COMPLETE:100").replace(
        "DTSTAMP:19970717T233000Z", "DTSTAMP:19970719T080000Z"
    )
    final = org_apply(after, organizer.process(org_message(newer), after, ctx))
    assert percent_complete(final.attendees[("", "b@example.com")]) == 100
