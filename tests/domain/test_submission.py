"""Organiser submissions, outbound relay recording and COUNTER answers.

RFC 5546 section 2.1.4 (SEQUENCE on significant change), 3.2.2 (REQUEST to the
attendees concerned), 3.2.4 (ADD), 3.2.5 (CANCEL, per instance and to removed
attendees), 3.7.1 (instance changes carry RECURRENCE-ID), 5.2.1 (release held
REPLYs once the object exists).
"""

from __future__ import annotations

from gateway.domain import organizer
from gateway.domain.ical import serialize
from gateway.domain.model import (
    DeleteAttendee,
    Outcome,
    PutAttendee,
    ReleaseHeld,
    Role,
)
from gateway.domain.submission import record_outbound, submit
from tests.domain.helpers import (
    ORG_NOW,
    org_apply,
    org_calendar,
    org_context,
    org_message,
    org_stored,
)

EVENT = """
BEGIN:VCALENDAR
PRODID:-//Client//EN
VERSION:2.0
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CN=Bob:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
DTSTART:20260302T090000Z
DTEND:20260302T100000Z
RRULE:FREQ=WEEKLY;COUNT=4
SUMMARY:Planning
LOCATION:Room 1
SEQUENCE:0
DTSTAMP:20260201T080000Z
END:VEVENT
END:VCALENDAR
"""


def ctx():  # type: ignore[no-untyped-def]
    return org_context(local=True)


def accepted_by_b_and_c():  # type: ignore[no-untyped-def]
    d = submit(org_calendar(EVENT), None, ctx())
    stored = org_apply(None, d)
    for who in ("b@example.com", "c@example.com"):
        reply = f"""
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=ACCEPTED:mailto:{who}
SEQUENCE:0
DTSTAMP:20260202T080000Z
END:VEVENT
END:VCALENDAR
"""
        stored = org_apply(
            stored, organizer.process(org_message(reply), stored, org_context(sender=who))
        )
    return stored


def test_new_event_is_stored_invites_everyone_and_releases_held_replies() -> None:
    d = submit(org_calendar(EVENT), None, ctx())
    assert d.outcome == Outcome.APPLIED
    stored = org_apply(None, d)
    assert stored.header.role == Role.ORGANIZER
    assert stored.header.organizer == "a@example.com"
    assert stored.instances[""].sequence == 0
    assert d.release == [ReleaseHeld("a@example.com", "sub-1@example.com")]
    (msg,) = d.outgoing
    assert (msg.method, msg.subject_kind, msg.auto) == ("REQUEST", "invitation", False)
    assert msg.recipients == ("b@example.com", "c@example.com")  # not the organiser
    assert msg.calendar.value("METHOD") == "REQUEST"


def test_non_significant_change_keeps_partstats_and_sequence_and_updates_everyone() -> None:
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(EVENT.replace("Planning", "Planning (agenda attached)")), stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 0
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    assert after.attendees[("", "b@example.com")].reply_sequence == 0
    (msg,) = d.outgoing
    assert msg.subject_kind == "updated"
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}
    assert msg.changes == ("Title changed: Planning -> Planning (agenda attached)",)


def test_significant_change_bumps_sequence_and_resets_partstats() -> None:
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(EVENT.replace("Room 1", "Room 2")), stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 1
    assert after.instances[""].component.value("SEQUENCE") == "1"
    assert after.instances[""].dtstamp == ORG_NOW
    assert after.attendees[("", "b@example.com")].partstat == "NEEDS-ACTION"
    assert after.attendees[("", "b@example.com")].rsvp
    assert after.attendees[("", "a@example.com")].partstat == "ACCEPTED"
    (msg,) = d.outgoing
    assert "Location changed: Room 1 -> Room 2" in msg.changes
    assert "SEQUENCE:1" in serialize(msg.calendar)


def test_submission_with_a_higher_sequence_keeps_it() -> None:
    stored = accepted_by_b_and_c()
    text = EVENT.replace("Room 1", "Room 2").replace("SEQUENCE:0", "SEQUENCE:5")
    after = org_apply(stored, submit(org_calendar(text), stored, ctx()))
    assert after.instances[""].sequence == 5


def test_unchanged_resubmission_sends_nothing() -> None:
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(EVENT), stored, ctx())
    assert d.outgoing == []
    assert not any(isinstance(c, PutAttendee) for c in d.changes)


def test_removed_attendee_gets_cancel_added_gets_request_others_nothing() -> None:
    stored = accepted_by_b_and_c()
    text = EVENT.replace(
        "ATTENDEE;RSVP=TRUE:mailto:c@example.com", "ATTENDEE;RSVP=TRUE:mailto:n@example.com"
    )
    d = submit(org_calendar(text), stored, ctx())
    assert DeleteAttendee("", "c@example.com") in d.changes
    by_method = {m.method: m for m in d.outgoing}
    assert set(by_method) == {"REQUEST", "CANCEL"}
    assert by_method["REQUEST"].recipients == ("n@example.com",)
    assert by_method["REQUEST"].subject_kind == "invitation"
    cancel = by_method["CANCEL"]
    assert cancel.recipients == ("c@example.com",)
    comp = cancel.calendar.sub("VEVENT")[0]
    assert [p.value for p in comp.get_all("ATTENDEE")] == ["mailto:c@example.com"]
    assert comp.get("RECURRENCE-ID") is None
    after = org_apply(stored, d)
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"


OVERRIDE = """
BEGIN:VEVENT
UID:sub-1@example.com
RECURRENCE-ID:20260309T090000Z
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CN=Bob:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
DTSTART:20260309T140000Z
DTEND:20260309T150000Z
SUMMARY:Planning
LOCATION:Room 1
SEQUENCE:0
DTSTAMP:20260201T080000Z
END:VEVENT
"""


def with_override(text: str = OVERRIDE) -> str:
    return EVENT.replace(
        "END:VEVENT\nEND:VCALENDAR", "END:VEVENT\n" + text.strip() + "\nEND:VCALENDAR"
    )


def test_instance_change_carries_recurrence_id_and_leaves_the_series() -> None:
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(with_override()), stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 0
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    key = "20260309T090000Z"
    assert after.instances[key].sequence == 1  # moved: bumped from the master's 0
    assert after.attendees[(key, "b@example.com")].partstat == "NEEDS-ACTION"
    (msg,) = d.outgoing
    assert msg.instance_key == key
    assert [c.value("RECURRENCE-ID") for c in msg.calendar.sub("VEVENT")] == [key]
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}
    assert msg.changes[0].startswith(f"Instance {key}: Time changed")


def test_attendee_removed_from_one_instance_gets_a_cancel_for_that_instance() -> None:
    stored = org_apply(
        accepted_by_b_and_c(), submit(org_calendar(with_override()), accepted_by_b_and_c(), ctx())
    )
    text = with_override(OVERRIDE.replace("ATTENDEE;RSVP=TRUE:mailto:c@example.com\n", ""))
    d = submit(org_calendar(text), stored, ctx())
    (cancel,) = [m for m in d.outgoing if m.method == "CANCEL"]
    assert cancel.recipients == ("c@example.com",)
    assert [c.value("RECURRENCE-ID") for c in cancel.calendar.sub("VEVENT")] == ["20260309T090000Z"]
    assert DeleteAttendee("20260309T090000Z", "c@example.com") in d.changes


def test_cancel_submission_cancels_for_everyone() -> None:
    stored = accepted_by_b_and_c()
    cal = org_calendar(EVENT)
    cal.set("METHOD", "CANCEL")
    d = submit(cal, stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].cancelled
    assert after.instances[""].sequence == 1
    assert after.header.status == "CANCELLED"
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}
    comp = msg.calendar.sub("VEVENT")[0]
    assert comp.value("STATUS") == "CANCELLED"
    assert comp.value("SEQUENCE") == "1"


def test_cancel_of_one_instance_touches_only_that_instance() -> None:
    stored = accepted_by_b_and_c()
    cal = org_calendar(
        """
BEGIN:VCALENDAR
PRODID:-//Client//EN
VERSION:2.0
METHOD:CANCEL
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
RECURRENCE-ID:20260316T090000Z
SEQUENCE:1
DTSTAMP:20260210T080000Z
END:VEVENT
END:VCALENDAR
"""
    )
    d = submit(cal, stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""] == stored.instances[""]
    inst = after.instances["20260316T090000Z"]
    assert inst.cancelled
    assert inst.component.value("DTSTART") == "20260316T090000Z"
    (msg,) = d.outgoing
    assert msg.instance_key == "20260316T090000Z"
    assert msg.calendar.sub("VEVENT")[0].value("RECURRENCE-ID") == "20260316T090000Z"


def test_added_rdate_only_is_sent_as_add_without_resetting_answers() -> None:
    stored = accepted_by_b_and_c()
    text = EVENT.replace(
        "RRULE:FREQ=WEEKLY;COUNT=4", "RRULE:FREQ=WEEKLY;COUNT=4\nRDATE:20260401T090000Z"
    )
    d = submit(org_calendar(text), stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 1  # RDATE is significant (2.1.4), ADD increments
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    (msg,) = d.outgoing
    assert msg.method == "ADD"
    (comp,) = msg.calendar.sub("VEVENT")
    assert comp.value("DTSTART") == "20260401T090000Z"
    assert comp.get("RECURRENCE-ID") is None
    assert comp.value("SEQUENCE") == "1"


def test_submission_by_someone_else_as_organiser_is_refused() -> None:
    d = submit(
        org_calendar(EVENT.replace("ORGANIZER:mailto:a@", "ORGANIZER:mailto:z@")), None, ctx()
    )
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert d.changes == []


def test_submission_over_an_attendee_copy_is_refused() -> None:
    stored = org_stored(
        EVENT.replace("ORGANIZER:mailto:a@", "ORGANIZER:mailto:z@"), role=Role.ATTENDEE
    )
    d = submit(org_calendar(EVENT), stored, ctx())
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "6.1.3" in d.reason


def test_delegates_added_by_replies_survive_a_resubmission() -> None:
    stored = accepted_by_b_and_c()
    delegation = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO="mailto:e@example.com":mailto:c@example.com
SEQUENCE:0
DTSTAMP:20260203T080000Z
END:VEVENT
END:VCALENDAR
"""
    stored = org_apply(
        stored,
        organizer.process(org_message(delegation), stored, org_context(sender="c@example.com")),
    )
    d = submit(org_calendar(EVENT.replace("Planning", "Planning!")), stored, ctx())
    assert not any(isinstance(c, DeleteAttendee) for c in d.changes)
    (msg,) = d.outgoing
    assert "e@example.com" in msg.recipients


# --- outbound relay -----------------------------------------------------------------------------


def test_outbound_request_is_recorded_without_messages_and_keeps_its_sequence() -> None:
    request = EVENT.replace("VERSION:2.0", "VERSION:2.0\nMETHOD:REQUEST")
    d = record_outbound(org_message(request), None, org_context())
    assert d.outcome == Outcome.APPLIED
    assert d.outgoing == []
    stored = org_apply(None, d)
    assert stored.header.role == Role.ORGANIZER
    assert stored.instances[""].sequence == 0
    assert d.release == [ReleaseHeld("a@example.com", "sub-1@example.com")]
    update = request.replace("Room 1", "Room 9").replace("SEQUENCE:0", "SEQUENCE:3")
    d2 = record_outbound(org_message(update), stored, org_context())
    after = org_apply(stored, d2)
    assert after.instances[""].sequence == 3
    assert d2.outgoing == []


def test_outbound_older_request_does_not_regress_the_copy() -> None:
    request = EVENT.replace("VERSION:2.0", "VERSION:2.0\nMETHOD:REQUEST").replace(
        "SEQUENCE:0", "SEQUENCE:4"
    )
    stored = org_apply(None, record_outbound(org_message(request), None, org_context()))
    older = request.replace("SEQUENCE:4", "SEQUENCE:2")
    d = record_outbound(org_message(older), stored, org_context())
    assert d.outcome == Outcome.IGNORED_STALE
    assert d.changes == []


def test_outbound_cancel_to_one_attendee_removes_that_attendee() -> None:
    stored = accepted_by_b_and_c()
    cancel = """
BEGIN:VCALENDAR
PRODID:-//Client//EN
VERSION:2.0
METHOD:CANCEL
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:c@example.com
SEQUENCE:1
DTSTAMP:20260210T080000Z
END:VEVENT
END:VCALENDAR
"""
    d = record_outbound(org_message(cancel), stored, org_context())
    assert d.changes == [DeleteAttendee("", "c@example.com")]
    assert d.outgoing == []


def test_outbound_add_records_the_new_instance() -> None:
    stored = accepted_by_b_and_c()
    add = """
BEGIN:VCALENDAR
PRODID:-//Client//EN
VERSION:2.0
METHOD:ADD
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
DTSTART:20260401T090000Z
DTEND:20260401T100000Z
SUMMARY:Planning
SEQUENCE:1
DTSTAMP:20260210T080000Z
END:VEVENT
END:VCALENDAR
"""
    d = record_outbound(org_message(add), stored, org_context())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 1
    assert after.instances[""].component.value("RDATE") == "20260401T090000Z"
    assert "20260401T090000Z" in after.instances
    assert d.outgoing == []


def test_removed_override_reverts_to_the_series_and_its_attendees_get_the_event() -> None:
    first = accepted_by_b_and_c()
    stored = org_apply(first, submit(org_calendar(with_override()), first, ctx()))
    d = submit(org_calendar(EVENT), stored, ctx())
    after = org_apply(stored, d)
    assert "20260309T090000Z" not in after.instances
    assert not any(k == "20260309T090000Z" for (k, _) in after.attendees)
    (msg,) = d.outgoing
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}
    assert [c.get("RECURRENCE-ID") for c in msg.calendar.sub("VEVENT")] == [None]


def test_new_exdate_with_another_significant_change_goes_to_everyone() -> None:
    # An EXDATE alone is a CANCEL of that instance (test_submission_instances.py); with
    # a location change as well the series has a new revision for everyone (2.1.4).
    stored = accepted_by_b_and_c()
    text = EVENT.replace(
        "RRULE:FREQ=WEEKLY;COUNT=4", "RRULE:FREQ=WEEKLY;COUNT=4\nEXDATE:20260316T090000Z"
    ).replace("LOCATION:Room 1", "LOCATION:Room 2")
    d = submit(org_calendar(text), stored, ctx())
    after = org_apply(stored, d)
    assert after.instances[""].sequence == 1
    assert after.attendees[("", "c@example.com")].partstat == "NEEDS-ACTION"
    (msg,) = d.outgoing
    assert msg.method == "REQUEST"
    assert "Recurrence changed: EXDATE" in msg.changes


def test_publish_submission_is_stored_without_messages() -> None:
    cal = org_calendar(EVENT)
    cal.set("METHOD", "PUBLISH")
    d = submit(cal, None, ctx())
    assert d.outcome == Outcome.APPLIED
    assert d.outgoing == []
    assert org_apply(None, d).header.role == Role.ORGANIZER


def test_delegator_who_wants_no_updates_is_not_sent_one() -> None:
    stored = accepted_by_b_and_c()
    delegation = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:sub-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=DELEGATED;RSVP=FALSE;DELEGATED-TO="mailto:e@example.com":mailto:c@example.com
SEQUENCE:0
DTSTAMP:20260203T080000Z
END:VEVENT
END:VCALENDAR
"""
    stored = org_apply(
        stored,
        organizer.process(org_message(delegation), stored, org_context(sender="c@example.com")),
    )
    text = EVENT.replace("Planning", "Planning!").replace(
        "ATTENDEE;RSVP=TRUE:mailto:c@example.com", "ATTENDEE:mailto:c@example.com"
    )
    d = submit(org_calendar(text), stored, ctx())
    (msg,) = d.outgoing
    assert set(msg.recipients) == {"b@example.com", "e@example.com"}
