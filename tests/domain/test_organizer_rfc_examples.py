"""RFC 5546 section 4 examples, organiser side: message in, state and messages out.

Each test feeds the RFC's own text (4.2.x group events, 4.4.8/4.4.9 recurring, 4.5.7
to-dos, 4.7.1 refresh) to :func:`gateway.domain.organizer.process` with the
organiser's stored copy, and checks the attendee rows and the outgoing iTIP.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.domain import organizer
from gateway.domain.ical import serialize
from gateway.domain.model import HeldItem, Outcome, PutAttendee, PutInstance
from gateway.domain.submission import counter_accept, counter_decline, submit
from tests.domain.helpers import (
    ORG_NOW,
    org_apply,
    org_calendar,
    org_context,
    org_message,
    org_stored,
)

UID = "calsrv.example.com-873970198738777@example.com"

# RFC 5546 4.2.1 (with the DTEND typo "T2100000Z" of the RFC text corrected).
REQUEST_4_2_1 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REQUEST
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED;CN=A:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL;CN=B:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL;CN=C:mailto:c@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL;CN=Hal:mailto:d@example.com
ATTENDEE;RSVP=FALSE;CUTYPE=ROOM:conf_big@example.com
ATTENDEE;ROLE=NON-PARTICIPANT;RSVP=FALSE:mailto:e@example.com
DTSTAMP:19970611T190000Z
DTSTART:19970701T200000Z
DTEND:19970701T210000Z
SUMMARY:Conference
UID:{UID}
SEQUENCE:0
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""

REPLY_4_2_2 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ATTENDEE;PARTSTAT=ACCEPTED:mailto:b@example.com
ORGANIZER:mailto:a@example.com
UID:{UID}
SEQUENCE:0
REQUEST-STATUS:2.0;Success
DTSTAMP:19970612T190000Z
END:VEVENT
END:VCALENDAR
"""

# RFC 5546 4.2.4/4.2.5: A invites B and C (UID unified; the RFC text varies it).
REQUEST_4_2_4 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REQUEST
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:c@example.com
DTSTART:19970701T190000Z
DTEND:19970701T200000Z
SUMMARY:Discuss the Merits of the election results
LOCATION:Green Conference Room
UID:{UID}
SEQUENCE:0
DTSTAMP:19970611T190000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""

COUNTER_4_2_4 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:COUNTER
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:c@example.com
DTSTART:19970701T160000Z
DTEND:19970701T170000Z
DTSTAMP:19970612T190000Z
SUMMARY:Discuss the Merits of the election results
LOCATION:Blue Conference Room
COMMENT:This time works much better and I think the big conference
  room is too big
UID:{UID}
SEQUENCE:0
END:VEVENT
END:VCALENDAR
"""

REPLY_4_2_5 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-
 TO="mailto:e@example.com":mailto:c@example.com
UID:{UID}
SEQUENCE:0
REQUEST-STATUS:2.0;Success
DTSTAMP:19970611T190000Z
END:VEVENT
END:VCALENDAR
"""

REPLY_4_2_6 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=ACCEPTED;DELEGATED-
 FROM="mailto:c@example.com":mailto:e@example.com
ATTENDEE;PARTSTAT=DELEGATED;
 DELEGATED-TO="mailto:e@example.com":mailto:c@example.com
UID:{UID}
SEQUENCE:0
REQUEST-STATUS:2.0;Success
DTSTAMP:19970614T190000Z
END:VEVENT
END:VCALENDAR
"""

REPLY_4_2_7 = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=DELEGATED;
 DELEGATED-TO="mailto:e@example.com":mailto:c@example.com
ATTENDEE;PARTSTAT=DECLINED;
 DELEGATED-FROM="mailto:c@example.com":mailto:e@example.com
COMMENT:Sorry, I will be out of town at that time.
UID:{UID}
SEQUENCE:0
REQUEST-STATUS:2.0;Success
DTSTAMP:19970614T190000Z
END:VEVENT
END:VCALENDAR
"""


def _puts(decision: object) -> list[PutAttendee]:
    return [c for c in decision.changes if isinstance(c, PutAttendee)]  # type: ignore[attr-defined]


def test_4_2_2_reply_updates_exactly_the_replying_attendee_row() -> None:
    stored = org_stored(REQUEST_4_2_1)
    decision = organizer.process(
        org_message(REPLY_4_2_2), stored, org_context(sender="b@example.com")
    )
    assert decision.outcome == Outcome.APPLIED
    assert decision.outgoing == []
    (put,) = decision.changes  # one row, nothing re-rendered
    assert isinstance(put, PutAttendee)
    row = put.attendee
    assert (row.instance_key, row.address, row.partstat) == ("", "b@example.com", "ACCEPTED")
    assert row.request_status == "2.0;Success"
    assert row.reply_sequence == 0
    assert row.reply_dtstamp == datetime(1997, 6, 12, 19, 0, tzinfo=UTC)
    assert row.replied_at == ORG_NOW
    assert row.prop.param("CN") == "B"  # the stored line's parameters survive


def test_4_2_2_load_plan_asks_only_for_the_replier() -> None:
    plan = organizer.load_plan(org_message(REPLY_4_2_2), "a@example.com")
    assert plan.attendee_addresses == frozenset({"b@example.com"})


def test_4_2_3_update_resets_replies_and_goes_to_every_attendee() -> None:
    stored = org_stored(REQUEST_4_2_1)
    stored = org_apply(
        stored,
        organizer.process(org_message(REPLY_4_2_2), stored, org_context(sender="b@example.com")),
    )
    update = org_calendar(
        REQUEST_4_2_1.replace("19970701T200000Z", "19970701T180000Z").replace(
            "19970701T210000Z", "19970701T190000Z"
        )
    )
    decision = submit(update, stored, org_context(local=True))
    assert decision.outcome == Outcome.APPLIED
    after = org_apply(stored, decision)
    assert after.instances[""].sequence == 1  # DTSTART changed: bumped (2.1.4)
    assert after.attendees[("", "b@example.com")].partstat == "NEEDS-ACTION"
    assert after.attendees[("", "a@example.com")].partstat == "ACCEPTED"  # the organiser
    (msg,) = decision.outgoing
    assert msg.method == "REQUEST"
    assert set(msg.recipients) == {
        "b@example.com",
        "c@example.com",
        "d@example.com",
        "conf_big@example.com",
        "e@example.com",
    }
    assert any(line.startswith("Time changed") for line in msg.changes)
    text = serialize(msg.calendar)
    assert "SEQUENCE:1" in text
    assert "DTSTART:19970701T180000Z" in text


def test_4_2_4_counter_is_recorded_not_applied() -> None:
    stored = org_stored(REQUEST_4_2_4)
    decision = organizer.process(
        org_message(COUNTER_4_2_4), stored, org_context(sender="b@example.com")
    )
    assert decision.outcome == Outcome.RECORDED
    assert decision.changes == []
    assert decision.outgoing == []
    (hold,) = decision.hold
    assert (hold.kind, hold.sender, hold.method, hold.sequence) == (
        "counter",
        "b@example.com",
        "COUNTER",
        0,
    )
    assert "Blue Conference Room" in hold.payload


def _held(decision_hold: object, held_id: int = 7) -> HeldItem:
    h = decision_hold
    return HeldItem(
        id=held_id,
        kind=h.kind,
        sender=h.sender,
        method=h.method,  # type: ignore[attr-defined]
        payload=h.payload,
        instance_key=h.instance_key,  # type: ignore[attr-defined]
        sequence=h.sequence,
        dtstamp=h.dtstamp,  # type: ignore[attr-defined]
    )


def test_4_2_4_counter_accepted_becomes_a_new_request_with_bumped_sequence() -> None:
    stored = org_stored(REQUEST_4_2_4)
    held = _held(
        organizer.process(
            org_message(COUNTER_4_2_4), stored, org_context(sender="b@example.com")
        ).hold[0]
    )
    stored.held = [held]
    decision = counter_accept(stored, held, org_context(local=True))
    assert decision.outcome == Outcome.APPLIED
    after = org_apply(stored, decision)
    assert after.held == []  # ResolveHeld
    master = after.instances[""]
    assert master.sequence == 1
    assert master.component.value("DTSTART") == "19970701T160000Z"
    assert master.component.text("LOCATION") == "Blue Conference Room"
    (msg,) = decision.outgoing
    assert msg.method == "REQUEST"
    assert not msg.auto
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}


def test_4_2_4_counter_declined_sends_declinecounter_echoing_the_sequence() -> None:
    stored = org_stored(REQUEST_4_2_4)
    held = _held(
        organizer.process(
            org_message(COUNTER_4_2_4), stored, org_context(sender="b@example.com")
        ).hold[0]
    )
    stored.held = [held]
    decision = counter_decline(
        stored, held, org_context(local=True), comment="Sorry, I cannot change this meeting time"
    )
    after = org_apply(stored, decision)
    assert after.held == []
    (msg,) = decision.outgoing
    assert msg.method == "DECLINECOUNTER"
    assert msg.recipients == ("b@example.com",)
    comp = msg.calendar.sub("VEVENT")[0]
    assert msg.calendar.value("METHOD") == "DECLINECOUNTER"
    assert comp.value("SEQUENCE") == "0"
    assert comp.value("ORGANIZER") == "mailto:a@example.com"
    assert [p.value for p in comp.get_all("ATTENDEE")] == ["mailto:b@example.com"]
    assert comp.text("COMMENT") == "Sorry, I cannot change this meeting time"
    assert stored.instances[""].sequence == after.instances[""].sequence == 0


def test_4_2_5_delegation_adds_the_delegate_and_sends_it_the_request() -> None:
    stored = org_stored(REQUEST_4_2_4)
    msg = org_message(REPLY_4_2_5)
    assert organizer.load_plan(msg, "a@example.com").attendee_addresses is None
    decision = organizer.process(msg, stored, org_context(sender="c@example.com"))
    assert decision.outcome == Outcome.APPLIED
    after = org_apply(stored, decision)
    c = after.attendees[("", "c@example.com")]
    e = after.attendees[("", "e@example.com")]
    assert (c.partstat, c.delegated_to) == ("DELEGATED", ("e@example.com",))
    assert (e.partstat, e.rsvp, e.delegated_from) == ("NEEDS-ACTION", True, ("c@example.com",))
    (out,) = decision.outgoing
    assert out.method == "REQUEST"
    assert out.recipients == ("e@example.com",)
    comp = out.calendar.sub("VEVENT")[0]
    assert comp.value("SEQUENCE") == "0"  # a delegation REQUEST never bumps (2.1.4)
    lines = {p.value: p for p in comp.get_all("ATTENDEE")}
    assert lines["mailto:e@example.com"].param("DELEGATED-FROM") == "mailto:c@example.com"
    assert lines["mailto:c@example.com"].param("PARTSTAT") == "DELEGATED"
    assert "mailto:b@example.com" in lines  # the full event


def test_4_2_6_delegate_accepts_only_its_own_row_changes() -> None:
    stored = org_stored(REQUEST_4_2_4)
    stored = org_apply(
        stored,
        organizer.process(org_message(REPLY_4_2_5), stored, org_context(sender="c@example.com")),
    )
    decision = organizer.process(
        org_message(REPLY_4_2_6), stored, org_context(sender="e@example.com")
    )
    assert decision.outcome == Outcome.APPLIED
    assert [p.attendee.address for p in _puts(decision)] == ["e@example.com"]
    after = org_apply(stored, decision)
    assert after.attendees[("", "e@example.com")].partstat == "ACCEPTED"
    assert after.attendees[("", "c@example.com")].partstat == "DELEGATED"


def test_5_2_2_delegate_reply_before_the_delegators_is_accepted() -> None:
    stored = org_stored(REQUEST_4_2_4)
    decision = organizer.process(
        org_message(REPLY_4_2_6), stored, org_context(sender="e@example.com")
    )
    assert decision.outcome == Outcome.APPLIED
    after = org_apply(stored, decision)
    e = after.attendees[("", "e@example.com")]
    assert (e.partstat, e.delegated_from) == ("ACCEPTED", ("c@example.com",))
    # The delegator's own REPLY, arriving later, completes the link without a new REQUEST.
    later = organizer.process(org_message(REPLY_4_2_5), after, org_context(sender="c@example.com"))
    final = org_apply(after, later)
    assert final.attendees[("", "c@example.com")].delegated_to == ("e@example.com",)
    assert final.attendees[("", "e@example.com")].partstat == "ACCEPTED"
    assert later.outgoing == []


def test_4_2_7_delegate_declines_and_the_delegator_gets_the_request_again() -> None:
    stored = org_stored(REQUEST_4_2_4)
    stored = org_apply(
        stored,
        organizer.process(org_message(REPLY_4_2_5), stored, org_context(sender="c@example.com")),
    )
    msg = org_message(REPLY_4_2_7)
    assert organizer.load_plan(msg, "a@example.com").attendee_addresses is None
    decision = organizer.process(msg, stored, org_context(sender="e@example.com"))
    after = org_apply(stored, decision)
    assert "comment: Sorry, I will be out of town" in decision.reason
    assert after.attendees[("", "e@example.com")].partstat == "DECLINED"
    c = after.attendees[("", "c@example.com")]
    assert (c.partstat, c.rsvp, c.delegated_to) == ("NEEDS-ACTION", True, ())
    (out,) = decision.outgoing
    assert out.method == "REQUEST"
    assert out.recipients == ("c@example.com",)
    comp = out.calendar.sub("VEVENT")[0]
    assert "DECLINED YOUR" in comp.text("COMMENT")
    lines = {p.value: p for p in comp.get_all("ATTENDEE")}
    assert lines["mailto:e@example.com"].param("PARTSTAT") == "DECLINED"
    assert lines["mailto:c@example.com"].param("RSVP") == "TRUE"


FORWARDED_REPLY = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=ACCEPTED;CN=Fred:mailto:f@example.com
UID:{UID}
SEQUENCE:0
DTSTAMP:19970613T190000Z
END:VEVENT
END:VCALENDAR
"""


def test_4_2_8_party_crasher_accept_adds_the_attendee() -> None:
    stored = org_stored(REQUEST_4_2_4)
    decision = organizer.process(
        org_message(FORWARDED_REPLY),
        stored,
        org_context(sender="f@example.com", party_crashers="accept"),
    )
    assert decision.outcome == Outcome.APPLIED
    after = org_apply(stored, decision)
    f = after.attendees[("", "f@example.com")]
    assert (f.partstat, f.prop.param("CN")) == ("ACCEPTED", "Fred")
    assert any("party crasher" in w for w in decision.warnings)


def test_4_2_8_party_crasher_ignore_and_hold() -> None:
    stored = org_stored(REQUEST_4_2_4)
    ignored = organizer.process(
        org_message(FORWARDED_REPLY),
        stored,
        org_context(sender="f@example.com", party_crashers="ignore"),
    )
    assert ignored.outcome == Outcome.IGNORED_POLICY
    assert ignored.changes == []
    assert ignored.hold == []
    held = organizer.process(
        org_message(FORWARDED_REPLY),
        stored,
        org_context(sender="f@example.com", party_crashers="hold"),
    )
    assert held.outcome == Outcome.HELD_PENDING
    assert held.changes == []
    assert [h.kind for h in held.hold] == ["party-crasher"]
    assert held.hold[0].sender == "f@example.com"


RECURRING_4_4_8 = """
BEGIN:VCALENDAR
METHOD:REQUEST
PRODID:-//Example/ExampleCalendarClient//EN
VERSION:2.0
BEGIN:VEVENT
UID:123456789@example.com
SEQUENCE:2
RDATE:19980304T180000Z
RDATE:19980311T180000Z
RDATE:19980318T180000Z
RDATE:19980315T180000Z
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
SUMMARY:Review Accounts
DTSTART:19980304T180000Z
DTEND:19980304T200000Z
DTSTAMP:19980303T193000Z
LOCATION:Conference Room A
STATUS:CONFIRMED
END:VEVENT
BEGIN:VEVENT
UID:123456789@example.com
SEQUENCE:1
RECURRENCE-ID:19980311T180000Z
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
SUMMARY:Review Accounts
DTSTART:19980311T160000Z
DTEND:19980311T180000Z
DTSTAMP:19980306T193000Z
LOCATION:The Small conference room
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""

REFRESH_FROM_B = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REFRESH
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
UID:123456789@example.com
DTSTAMP:19980320T094000Z
END:VEVENT
END:VCALENDAR
"""


def test_4_4_8_refresh_is_answered_with_master_and_instance_changes() -> None:
    stored = org_stored(RECURRING_4_4_8)
    msg = org_message(REFRESH_FROM_B)
    assert organizer.load_plan(msg, "a@example.com").attendee_addresses is None
    decision = organizer.process(msg, stored, org_context(sender="b@example.com"))
    assert decision.outcome == Outcome.APPLIED
    assert decision.changes == []
    (out,) = decision.outgoing
    assert out.method == "REQUEST"
    assert out.recipients == ("b@example.com",)
    assert out.answering
    assert out.calendar.value("METHOD") == "REQUEST"
    master, override = out.calendar.sub("VEVENT")
    assert master.get("RECURRENCE-ID") is None
    assert master.value("SEQUENCE") == "2"
    assert override.value("RECURRENCE-ID") == "19980311T180000Z"
    assert override.text("LOCATION") == "The Small conference room"
    assert override.value("SEQUENCE") == "1"
    assert {p.value for p in master.get_all("ATTENDEE")} == {
        "mailto:a@example.com",
        "mailto:b@example.com",
    }


REFRESH_4_7_1 = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REFRESH
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
UID:guid-1-12345@example.com
DTSTAMP:19970603T094000
END:VEVENT
END:VCALENDAR
"""

EVENT_GUID_1 = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
UID:guid-1-12345@example.com
DTSTART:19970610T160000Z
DTEND:19970610T170000Z
SUMMARY:Staff meeting
SEQUENCE:3
DTSTAMP:19970601T094000Z
END:VEVENT
END:VCALENDAR
"""


def test_4_7_1_refresh_naming_all_attendees_answers_the_sender_only() -> None:
    stored = org_stored(EVENT_GUID_1)
    decision = organizer.process(
        org_message(REFRESH_4_7_1), stored, org_context(sender="c@example.com")
    )
    (out,) = decision.outgoing
    assert out.recipients == ("c@example.com",)
    assert out.calendar.sub("VEVENT")[0].value("SEQUENCE") == "3"


def test_6_1_6_refresh_from_a_non_attendee_gets_nothing() -> None:
    stored = org_stored(EVENT_GUID_1)
    refresh = REFRESH_4_7_1.replace("mailto:c@example.com", "mailto:x@evil.example")
    decision = organizer.process(org_message(refresh), stored, org_context(sender="x@evil.example"))
    assert decision.outcome == Outcome.REJECTED_UNAUTHORISED
    assert decision.outgoing == []
    assert "6.1.6" in decision.reason


COUNTER_4_4_9 = """
BEGIN:VCALENDAR
METHOD:COUNTER
PRODID:-//Example/ExampleCalendarClient//EN
VERSION:2.0
BEGIN:VEVENT
UID:guid-1@example.com
RECURRENCE-ID:19970715T210000Z
SEQUENCE:4
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;RSVP=TRUE:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DESCRIPTION:IETF-C&S Conference Call
CLASS:PUBLIC
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970715T220000Z
DTEND:19970715T230000Z
LOCATION:Conference Call
COMMENT:May we bump this by an hour? I have a conflict
DTSTAMP:19970629T094000Z
END:VEVENT
END:VCALENDAR
"""

WEEKLY_CALL = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
VERSION:2.0
BEGIN:VEVENT
UID:guid-1@example.com
SEQUENCE:4
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;RSVP=TRUE:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970701T210000Z
DTEND:19970701T220000Z
RRULE:FREQ=WEEKLY;COUNT=6
LOCATION:Conference Call
DTSTAMP:19970626T094000Z
END:VEVENT
END:VCALENDAR
"""


def test_4_4_9_counter_for_one_instance_is_held_for_that_instance() -> None:
    stored = org_stored(WEEKLY_CALL)
    decision = organizer.process(
        org_message(COUNTER_4_4_9), stored, org_context(sender="c@example.com")
    )
    assert decision.outcome == Outcome.RECORDED
    (hold,) = decision.hold
    assert (hold.instance_key, hold.sender, hold.sequence) == (
        "19970715T210000Z",
        "c@example.com",
        4,
    )
    assert decision.recurrence_id == "19970715T210000Z"


def test_4_4_9_accepting_an_instance_counter_creates_the_override_only() -> None:
    stored = org_stored(WEEKLY_CALL)
    held = _held(
        organizer.process(
            org_message(COUNTER_4_4_9), stored, org_context(sender="c@example.com")
        ).hold[0]
    )
    decision = counter_accept(stored, held, org_context(local=True))
    after = org_apply(stored, decision)
    assert after.instances[""].sequence == 4  # the series is untouched
    override = after.instances["19970715T210000Z"]
    assert override.component.value("DTSTART") == "19970715T220000Z"
    assert override.sequence == 5
    (out,) = decision.outgoing
    assert out.instance_key == "19970715T210000Z"
    assert [c.value("RECURRENCE-ID") for c in out.calendar.sub("VEVENT")] == ["19970715T210000Z"]
    assert set(out.recipients) == {"b@example.com", "c@example.com", "d@example.com"}


TODO_4_5_7_1 = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REQUEST
VERSION:2.0
BEGIN:VTODO
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:d@example.com
RRULE:FREQ=MONTHLY;COUNT=10;BYDAY=1FR
DTSTART:19980101T100000Z
DUE:19980103T100000Z
SUMMARY:Send Status Reports to Area Managers
UID:calsrv.example.com-873970198738777-00@example.com
SEQUENCE:0
DTSTAMP:19970717T200000Z
STATUS:NEEDS-ACTION
PRIORITY:1
END:VTODO
END:VCALENDAR
"""

TODO_REPLY_4_5_7_2 = """
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VTODO
ATTENDEE;PARTSTAT=IN-PROCESS:mailto:b@example.com
PERCENT-COMPLETE:75
UID:calsrv.example.com-873970198738777-00@example.com
DTSTAMP:19970717T233000Z
RECURRENCE-ID:19980101T170000Z
SEQUENCE:1
END:VTODO
END:VCALENDAR
"""


def test_4_5_7_2_as_printed_names_a_time_that_is_no_instance_and_is_rejected() -> None:
    # The RFC example's RECURRENCE-ID (17:00) matches no instance of the to-do
    # (DTSTART 10:00): section 4.7.2 treats such a RECURRENCE-ID as an error.
    stored = org_stored(TODO_4_5_7_1)
    decision = organizer.process(
        org_message(TODO_REPLY_4_5_7_2), stored, org_context(sender="b@example.com")
    )
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert "not an instance" in decision.reason
    assert decision.changes == []
    assert any("ORGANIZER" in w for w in decision.warnings)


def test_4_5_7_2_instance_reply_creates_an_override_and_leaves_the_series() -> None:
    stored = org_stored(TODO_4_5_7_1)
    reply = TODO_REPLY_4_5_7_2.replace("19980101T170000Z", "19980101T100000Z")
    decision = organizer.process(org_message(reply), stored, org_context(sender="b@example.com"))
    assert decision.outcome == Outcome.APPLIED
    assert any("ORGANIZER" in w for w in decision.warnings)  # Outlook-style: none given
    (inst,) = [c.instance for c in decision.changes if isinstance(c, PutInstance)]
    assert inst.key == "19980101T100000Z"
    assert inst.component.value("RECURRENCE-ID") == "19980101T100000Z"
    assert inst.component.get("RRULE") is None
    assert inst.component.value("DUE") == "19980103T100000Z"
    after = org_apply(stored, decision)
    assert after.attendees[("19980101T100000Z", "b@example.com")].partstat == "IN-PROCESS"
    assert after.attendees[("19980101T100000Z", "d@example.com")].partstat == "NEEDS-ACTION"
    assert after.attendees[("", "b@example.com")] == stored.attendees[("", "b@example.com")]
    assert after.instances[""] == stored.instances[""]
