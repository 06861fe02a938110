"""RFC 5546 section 4 examples, attendee side: the message in, stored state and replies out.

The texts are copied from the RFC.  Where the RFC's own example is malformed (4.1.4
and 4.2.1 have DTEND typos, 4.4.5 writes ``RECURRENCE-ID;THISANDFUTURE:``), the test
shows what the gateway does with the text as printed and runs the flow on the
corrected text.
"""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.domain.model import BusyPeriod, Outcome, ReleaseHeld, ReplaceBusy
from tests.domain.helpers import (
    att_context,
    att_partstat,
    att_process,
    att_reply_lines,
    att_steps,
)

P = "BEGIN:VCALENDAR\nPRODID:-//Example/ExampleCalendarClient//EN\nVERSION:2.0\n"

# --- 4.1 published events ------------------------------------------------------------

PUB_411 = (
    P
    + """METHOD:PUBLISH
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
DTSTART:19970701T200000Z
DTSTAMP:19970611T190000Z
SUMMARY:ST. PAUL SAINTS -VS- DULUTH-SUPERIOR DUKES
UID:0981234-1234234-23@example.com
END:VEVENT
END:VCALENDAR
"""
)

PUB_412 = (
    P
    + """METHOD:PUBLISH
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
DTSTAMP:19970612T190000Z
DTSTART:19970701T210000Z
DTEND:19970701T230000Z
SEQUENCE:1
UID:0981234-1234234-23@example.com
SUMMARY:ST. PAUL SAINTS -VS- DULUTH-SUPERIOR DUKES
END:VEVENT
END:VCALENDAR
"""
)

CANCEL_413 = (
    P
    + """METHOD:CANCEL
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
COMMENT:DUKES forfeit the game
SEQUENCE:2
UID:0981234-1234234-23@example.com
DTSTAMP:19970613T190000Z
END:VEVENT
END:VCALENDAR
"""
)

PUB_414 = (
    P
    + """METHOD:PUBLISH
BEGIN:VTIMEZONE
TZID:America-Chicago
BEGIN:STANDARD
DTSTART:19671029T020000
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10
TZOFFSETFROM:-0500
TZOFFSETTO:-0600
TZNAME:CST
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19870405T020000
RRULE:FREQ=YEARLY;BYDAY=1SU;BYMONTH=4
TZOFFSETFROM:-0600
TZOFFSETTO:-0500
TZNAME:CDT
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
DTEND;TZID=America-Chicago:19970701T180000
DTSTART;TZID=America-Chicago:19970702T160000
DTSTAMP:19970614T190000Z
STATUS:CONFIRMED
SEQUENCE:3
SUMMARY:ST. PAUL SAINTS -VS- DULUTH-SUPERIOR DUKES
UID:0981234-1234234-23@example.com
BEGIN:VALARM
TRIGGER:-PT2H
ACTION:DISPLAY
DESCRIPTION:You should be leaving for the game now.
END:VALARM
END:VEVENT
END:VCALENDAR
"""
)

PUB_415 = (
    P
    + """METHOD:PUBLISH
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
DTSTAMP:19970614T190000Z
UID:0981234-1234234-23@example.com
DTSTART;VALUE=DATE:19970714
RRULE:FREQ=YEARLY;INTERVAL=1
SUMMARY: Bastille Day
END:VEVENT
END:VCALENDAR
"""
)


def test_4_1_1_published_event_is_stored_without_reply() -> None:
    decision, stored = att_process(PUB_411, None, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert decision.outgoing == []
    assert stored is not None
    assert stored.header.organizer == "a@example.com"
    assert stored.instances[""].start == datetime(1997, 7, 1, 20, 0, tzinfo=UTC)
    assert stored.attendees == {}


def test_4_1_2_newer_publication_replaces_and_older_one_is_ignored() -> None:
    decisions, stored = att_steps(att_context(), PUB_411, PUB_412, PUB_411)
    assert [d.outcome for d in decisions] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.IGNORED_STALE,
    ]
    assert stored is not None
    assert stored.instances[""].sequence == 1
    assert stored.instances[""].end == datetime(1997, 7, 1, 23, 0, tzinfo=UTC)


def test_4_1_3_cancel_of_published_event_marks_it_cancelled() -> None:
    decisions, stored = att_steps(att_context(), PUB_411, PUB_412, CANCEL_413)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.status == "CANCELLED"
    assert stored.instances[""].cancelled
    assert stored.instances[""].component.value("SUMMARY")  # history kept


def test_4_1_4_rich_publication_as_printed_is_refused_for_its_dtend_typo() -> None:
    # The RFC's DTEND (July 1st) precedes its DTSTART (July 2nd).
    decision, stored = att_process(PUB_414, None, att_context())
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert "3.5" in decision.reason
    assert decision.outgoing == []  # nobody asked for an answer to a PUBLISH
    assert stored is None


def test_4_1_4_rich_publication_uses_its_vtimezone_and_keeps_alarms() -> None:
    fixed = PUB_414.replace("19970701T180000", "19970702T180000")
    decision, stored = att_process(fixed, None, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    # 16:00 CDT (UTC-5) in the RFC's custom America-Chicago VTIMEZONE.
    assert stored.instances[""].start == datetime(1997, 7, 2, 21, 0, tzinfo=UTC)
    assert len(stored.instances[""].component.sub("VALARM")) == 1
    assert [z.value("TZID") for z in stored.header.timezones] == ["America-Chicago"]


def test_4_1_5_all_day_yearly_publication_is_recurring() -> None:
    decision, stored = att_process(PUB_415, None, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.is_recurring
    assert stored.instances[""].end == datetime(1997, 7, 15, 0, 0, tzinfo=UTC)


# --- 4.2 group events ----------------------------------------------------------------

REQ_421 = (
    P
    + """METHOD:REQUEST
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
DTEND:19970701T2100000Z
SUMMARY:Conference
UID:calsrv.example.com-873970198738777@example.com
SEQUENCE:0
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)
REQ_421_FIXED = REQ_421.replace("T2100000Z", "T210000Z")

REQ_423 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL:mailto:c@example.com
ATTENDEE;RSVP=TRUE;CUTYPE=INDIVIDUAL;CN=Hal:mailto:d@example.com
ATTENDEE;ROLE=NON-PARTICIPANT;RSVP=FALSE;
 CUTYPE=ROOM:mailto:conf@example.com
ATTENDEE;ROLE=NON-PARTICIPANT;RSVP=FALSE:mailto:e@example.com
DTSTART:19970701T180000Z
DTEND:19970701T190000Z
SUMMARY:Phone Conference
UID:calsrv.example.com-873970198738777@example.com
SEQUENCE:1
DTSTAMP:19970613T190000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

CANCEL_429 = (
    P
    + """METHOD:CANCEL
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;CUTYPE=INDIVIDUAL;mailto:a@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:c@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:d@example.com
COMMENT:Mr. B cannot attend.  It's raining.  Lets cancel.
UID:calsrv.example.com-873970198738777@example.com
SEQUENCE:1
STATUS:CANCELLED
DTSTAMP:19970613T190000Z
END:VEVENT
END:VCALENDAR
"""
)

CANCEL_4210 = (
    P
    + """METHOD:CANCEL
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
COMMENT:You're off the hook for this meeting
UID:calsrv.example.com-873970198738777@example.com
DTSTAMP:19970613T193000Z
SEQUENCE:1
END:VEVENT
END:VCALENDAR
"""
)

REQ_4210 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:c@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:d@example.com
ATTENDEE;CUTYPE=ROOM:mailto:cr_big@example.com
ATTENDEE;ROLE=NON-PARTICIPANT;
 RSVP=FALSE:mailto:e@example.com
DTSTAMP:19970611T190000Z
DTSTART:19970701T200000Z
DTEND:19970701T203000Z
SUMMARY:Phone Conference
UID:calsrv.example.com-873970198738777@example.com
SEQUENCE:2
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

REQ_4211 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
ORGANIZER:mailto:b@example.com
ATTENDEE;ROLE=CHAIR;STATUS=ACCEPTED:mailto:b@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:c@example.com
ATTENDEE;CUTYPE=INDIVIDUAL:mailto:d@example.com
DTSTAMP:19970611T190000Z
DTSTART:19970701T200000Z
DTEND:19970701T203000Z
RRULE:FREQ=WEEKLY
SUMMARY:Phone Conference
UID:123456@example.com
SEQUENCE:1
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)


def test_4_2_1_request_as_printed_gets_a_3_5_request_status_reply() -> None:
    decision, stored = att_process(REQ_421, None, att_context())
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert stored is None
    assert [m.method for m in decision.outgoing] == ["REPLY"]
    assert att_reply_lines(decision, "REQUEST-STATUS") == [
        "REQUEST-STATUS:3.5;Invalid date or time;DTEND"
    ]
    assert decision.outgoing[0].recipients == ("a@example.com",)


def test_4_2_1_manual_policy_stores_needs_action_and_replies_nothing() -> None:
    decision, stored = att_process(REQ_421_FIXED, None, att_context(policy="manual"))
    assert decision.outcome == Outcome.RECORDED
    assert decision.outgoing == []
    assert att_partstat(stored, "b@example.com") == "NEEDS-ACTION"
    assert att_partstat(stored, "a@example.com") == "ACCEPTED"
    assert stored is not None
    assert len([k for k in stored.attendees if k[0] == ""]) == 6
    assert stored.header.role == "attendee"
    assert decision.release == [
        ReleaseHeld("b@example.com", "calsrv.example.com-873970198738777@example.com")
    ]


def test_4_2_2_accepting_sends_the_reply_of_the_rfc_example() -> None:
    decision, stored = att_process(REQ_421_FIXED, None, att_context(policy="accept"))
    assert decision.outcome == Outcome.APPLIED
    [reply] = decision.outgoing
    assert reply.method == "REPLY"
    assert reply.recipients == ("a@example.com",)
    assert reply.subject_kind == "accepted"
    assert reply.answering
    [comp] = reply.calendar.sub("VEVENT")
    assert reply.calendar.value("METHOD") == "REPLY"
    assert [p.value for p in comp.get_all("ATTENDEE")] == ["mailto:b@example.com"]
    assert comp.get_all("ATTENDEE")[0].param("PARTSTAT") == "ACCEPTED"
    assert comp.value("ORGANIZER") == "mailto:a@example.com"
    assert comp.value("UID") == "calsrv.example.com-873970198738777@example.com"
    assert comp.value("SEQUENCE") == "0"
    assert comp.value("DTSTAMP") == "19970615T120000Z"  # ctx.now, never the clock
    assert att_partstat(stored, "b@example.com") == "ACCEPTED"


def test_4_2_3_rescheduling_resets_the_owner_answer() -> None:
    ctx = att_context(policy="accept")
    _decisions, stored = att_steps(ctx, REQ_421_FIXED)
    assert att_partstat(stored, "b@example.com") == "ACCEPTED"
    decision, stored = att_process(REQ_423, stored, att_context(policy="manual"))
    assert decision.outcome == Outcome.RECORDED
    assert "significant" in decision.reason
    assert att_partstat(stored, "b@example.com") == "NEEDS-ACTION"
    assert stored is not None
    assert stored.instances[""].start == datetime(1997, 7, 1, 18, 0, tzinfo=UTC)
    # conf_big was replaced by conf: the removed room's row is gone.
    assert ("", "conf_big@example.com") not in stored.attendees
    assert ("", "conf@example.com") in stored.attendees


def test_4_2_9_cancel_marks_the_event_cancelled_and_frees_the_time() -> None:
    decisions, stored = att_steps(att_context(policy="accept"), REQ_421_FIXED, CANCEL_429)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert decisions[-1].outgoing == []
    assert stored is not None
    assert stored.header.status == "CANCELLED"
    assert stored.instances[""].cancelled
    busy = [c for c in decisions[-1].changes if isinstance(c, ReplaceBusy)]
    assert busy == [ReplaceBusy(())]
    # Anything older than the CANCEL is ignored afterwards (4.2.9).
    again, _ = att_process(REQ_421_FIXED, stored, att_context())
    assert again.outcome == Outcome.IGNORED_STALE


def test_4_2_10_cancel_to_the_removed_attendee_cancels_their_copy() -> None:
    decisions, stored = att_steps(att_context(policy="accept"), REQ_421_FIXED, CANCEL_4210)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert "removed" in decisions[-1].reason
    assert stored is not None
    assert stored.instances[""].cancelled


def test_4_2_10_remaining_attendee_sees_b_removed_and_is_asked_again() -> None:
    ctx = att_context(owner="c@example.com", policy="accept")
    _, stored = att_steps(ctx, REQ_421_FIXED)
    decision, stored = att_process(REQ_4210, stored, att_context(owner="c@example.com"))
    assert decision.outcome == Outcome.RECORDED  # manual policy now: stored for the user
    assert stored is not None
    assert ("", "b@example.com") not in stored.attendees
    # DTEND moved 21:00 -> 20:30: significant, so C must answer again.
    assert att_partstat(stored, "c@example.com") == "NEEDS-ACTION"


def test_4_2_11_organiser_replaced_by_an_attendee_is_refused() -> None:
    ctx = att_context(owner="c@example.com", policy="accept")
    original = REQ_4211.replace("ORGANIZER:mailto:b@example.com", "ORGANIZER:mailto:a@example.com")
    original = original.replace("SEQUENCE:1", "SEQUENCE:0")
    _, stored = att_steps(ctx, original)
    decision, after = att_process(
        REQ_4211, stored, att_context(owner="c@example.com", sender="b@example.com")
    )
    assert decision.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "b@example.com" in decision.reason
    assert "a@example.com" in decision.reason
    assert after is not None
    assert after.header.organizer == "a@example.com"


def test_4_2_11_organiser_change_sent_by_the_old_organiser_is_held() -> None:
    ctx = att_context(owner="c@example.com", policy="accept")
    original = REQ_4211.replace("ORGANIZER:mailto:b@example.com", "ORGANIZER:mailto:a@example.com")
    original = original.replace("SEQUENCE:1", "SEQUENCE:0")
    _, stored = att_steps(ctx, original)
    decision, _ = att_process(REQ_4211, stored, att_context(owner="c@example.com"))
    assert decision.outcome == Outcome.HELD_PENDING
    assert [h.kind for h in decision.hold] == ["organizer-change"]
    assert decision.changes == []


# --- 4.3 busy time -------------------------------------------------------------------

FB_431 = (
    P
    + """METHOD:PUBLISH
BEGIN:VFREEBUSY
DTSTAMP:19980101T124100Z
ORGANIZER:mailto:a@example.com
DTSTART:19980101T124200Z
DTEND:19980108T124200Z
FREEBUSY:19980101T180000Z/19980101T190000Z
FREEBUSY:19980103T020000Z/19980103T050000Z
END:VFREEBUSY
END:VCALENDAR
"""
)

FB_432 = (
    P
    + """METHOD:REQUEST
BEGIN:VFREEBUSY
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
DTSTAMP:19970613T190000Z
DTSTART:19970701T080000Z
DTEND:19970701T200000
UID:calsrv.example.com-873970198738777@example.com
END:VFREEBUSY
END:VCALENDAR
"""
)


def _utc(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(1997, 7, day, hour, minute, tzinfo=UTC)


def test_4_3_1_published_busy_time_is_recorded() -> None:
    decision, stored = att_process(FB_431, None, att_context())
    assert decision.outcome == Outcome.RECORDED
    assert decision.outgoing == []
    assert stored is None


def test_4_3_2_busy_time_request_gets_the_4_3_3_reply() -> None:
    busy = (
        BusyPeriod(_utc(1, 9), _utc(1, 10)),
        BusyPeriod(_utc(1, 14), _utc(1, 14, 30), "BUSY"),
        BusyPeriod(_utc(1, 13), _utc(1, 14), "FREE"),
        BusyPeriod(_utc(2, 9), _utc(2, 10)),  # outside the requested range
    )
    decision, _ = att_process(FB_432, None, att_context(busy=busy))
    assert decision.outcome == Outcome.APPLIED
    [reply] = decision.outgoing
    assert reply.method == "REPLY"
    assert reply.recipients == ("a@example.com",)
    [comp] = reply.calendar.sub("VFREEBUSY")
    assert comp.value("ATTENDEE") == "mailto:b@example.com"
    assert comp.value("UID") == "calsrv.example.com-873970198738777@example.com"
    assert comp.value("DTSTART") == "19970701T080000Z"
    assert comp.value("DTEND") == "19970701T200000Z"
    assert [p.value for p in comp.get_all("FREEBUSY")] == [
        "19970701T090000Z/19970701T100000Z",
        "19970701T140000Z/19970701T143000Z",
    ]
    assert comp.get("SEQUENCE") is None  # 3.3.3: SEQUENCE must not be present


def test_4_3_2_busy_window_is_the_requested_range() -> None:
    from gateway.domain import engine
    from tests.domain.helpers import org_message

    window = engine.busy_window(org_message(FB_432), att_context())
    assert window == (_utc(1, 8), _utc(1, 20))


# --- 4.4 recurring events ------------------------------------------------------------

REQ_442 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
UID:guid-1@example.com
SEQUENCE:0
RRULE:FREQ=MONTHLY;BYMONTHDAY=1;UNTIL=19980901T210000Z
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
DESCRIPTION:IETF-C&S Conference Call
CLASS:PUBLIC
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970601T210000Z
DTEND:19970601T220000Z
LOCATION:Conference Call
DTSTAMP:19970526T083000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

REQ_442_INSTANCE = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
UID:guid-1@example.com
RECURRENCE-ID:19970701T210000Z
SEQUENCE:1
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
DESCRIPTION:IETF-C&S Conference Call
CLASS:PUBLIC
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970703T210000Z
DTEND:19970703T220000Z
LOCATION:Conference Call
DTSTAMP:19970626T093000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

CANCEL_443 = (
    P
    + """METHOD:CANCEL
BEGIN:VEVENT
UID:guid-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
RECURRENCE-ID:19970801T210000Z
SEQUENCE:2
STATUS:CANCELLED
DTSTAMP:19970721T093000Z
END:VEVENT
END:VCALENDAR
"""
)

CANCEL_444 = (
    P
    + """METHOD:CANCEL
BEGIN:VEVENT
UID:guid-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE:mailto:b@example.com
ATTENDEE:mailto:c@example.com
ATTENDEE:mailto:d@example.com
DTSTAMP:19970721T103000Z
STATUS:CANCELLED
SEQUENCE:3
END:VEVENT
END:VCALENDAR
"""
)

REQ_445 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
UID:guid-1@example.com
RECURRENCE-ID;THISANDFUTURE:19970901T210000Z
SEQUENCE:3
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DESCRIPTION:IETF-C&S Discussion
CLASS:PUBLIC
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970901T210000Z
DTEND:19970901T220000Z
LOCATION:Building 32, Microsoft, Seattle, WA
DTSTAMP:19970526T083000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

ADD_446 = (
    P
    + """METHOD:ADD
BEGIN:VEVENT
UID:123456789@example.com
SEQUENCE:4
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DESCRIPTION:IETF-C&S Conference Call
CLASS:PUBLIC
SUMMARY:IETF Calendaring Working Group Meeting
DTSTART:19970715T210000Z
DTEND:19970715T220000Z
LOCATION:Conference Call
DTSTAMP:19970629T093000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

REQ_447 = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
UID:123456789@example.com
SEQUENCE:0
RRULE:WKST=SU;BYDAY=TU;FREQ=WEEKLY
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
SUMMARY:Review Accounts
DTSTART:19980303T210000Z
DTEND:19980303T220000Z
LOCATION:The White Room
DTSTAMP:19980301T093000Z
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

REQ_447_RESCHEDULE = (
    P
    + """METHOD:REQUEST
BEGIN:VEVENT
UID:123456789@example.com
SEQUENCE:7
RRULE:WKST=SU;BYDAY=TU,TH;FREQ=WEEKLY
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
SUMMARY:Review Accounts
DTSTART:19980303T210000Z
DTEND:19980303T220000Z
DTSTAMP:19980303T193000Z
LOCATION:The White Room
STATUS:CONFIRMED
END:VEVENT
END:VCALENDAR
"""
)

JULY = "19970701T210000Z"
AUGUST = "19970801T210000Z"


def test_4_4_2_changing_one_instance_creates_an_override_only() -> None:
    decisions, stored = att_steps(att_context(policy="accept"), REQ_442, REQ_442_INSTANCE)
    assert [d.outcome for d in decisions] == [Outcome.APPLIED, Outcome.APPLIED]
    assert decisions[1].recurrence_id == JULY
    assert stored is not None
    assert set(stored.instances) == {"", JULY}
    assert stored.instances[JULY].start == datetime(1997, 7, 3, 21, 0, tzinfo=UTC)
    assert stored.instances[""].sequence == 0  # the series is untouched
    # The instance moved: answer again, for that instance only (RECURRENCE-ID in the reply).
    assert att_partstat(stored, "b@example.com", "") == "ACCEPTED"
    assert att_partstat(stored, "b@example.com", JULY) == "ACCEPTED"
    [reply] = decisions[1].outgoing
    assert reply.instance_key == JULY
    assert [c.value("RECURRENCE-ID") for c in reply.calendar.sub("VEVENT")] == [JULY]
    assert [c.value("SEQUENCE") for c in reply.calendar.sub("VEVENT")] == ["1"]


def test_4_4_3_cancelling_one_instance_never_touches_the_series() -> None:
    decisions, stored = att_steps(att_context(policy="accept"), REQ_442, CANCEL_443)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert stored is not None
    assert not stored.instances[""].cancelled
    assert stored.header.status == "CONFIRMED"
    assert stored.instances[AUGUST].cancelled
    assert stored.instances[AUGUST].sequence == 2
    # The override got its own copy of the attendees (model: overrides own their rows).
    assert att_partstat(stored, "b@example.com", AUGUST) == "ACCEPTED"
    [busy] = [c for c in decisions[-1].changes if isinstance(c, ReplaceBusy)]
    starts = {p.start for p in busy.periods}
    assert datetime(1997, 8, 1, 21, 0, tzinfo=UTC) not in starts
    assert datetime(1997, 7, 1, 21, 0, tzinfo=UTC) in starts


def test_4_4_4_cancelling_the_series_cancels_every_instance() -> None:
    decisions, stored = att_steps(
        att_context(policy="accept"), REQ_442, REQ_442_INSTANCE, CANCEL_443, CANCEL_444
    )
    assert decisions[-1].outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.status == "CANCELLED"
    assert all(i.cancelled for i in stored.instances.values())
    assert [c for c in decisions[-1].changes if isinstance(c, ReplaceBusy)] == [ReplaceBusy(())]


def test_4_4_5_as_printed_the_bare_thisandfuture_token_is_refused() -> None:
    _, stored = att_steps(att_context(), REQ_442)
    decision, _ = att_process(REQ_445, stored, att_context())
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert "RECURRENCE-ID" in decision.reason
    assert att_reply_lines(decision, "REQUEST-STATUS")  # RSVP=TRUE: a status reply is owed


def test_4_4_5_this_and_future_change_is_stored_as_a_range_override() -> None:
    fixed = REQ_445.replace("RECURRENCE-ID;THISANDFUTURE:", "RECURRENCE-ID;RANGE=THISANDFUTURE:")
    decisions, stored = att_steps(att_context(policy="accept"), REQ_442, fixed)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert stored is not None
    override = stored.instances["19970901T210000Z"]
    assert override.this_and_future
    assert override.component.text("LOCATION") == "Building 32, Microsoft, Seattle, WA"
    # LOCATION is significant by default: the owner is asked again.
    assert decisions[-1].outgoing[0].subject_kind == "accepted"


def test_4_4_6_add_creates_the_new_instance_and_answers_it() -> None:
    decisions, stored = att_steps(att_context(policy="accept"), REQ_447, ADD_446)
    assert decisions[-1].outcome == Outcome.APPLIED
    assert stored is not None
    key = "19970715T210000Z"
    assert stored.instances[key].start == datetime(1997, 7, 15, 21, 0, tzinfo=UTC)
    assert stored.instances[""].component.value("RDATE") == "19970715T210000Z"
    assert att_partstat(stored, "b@example.com", key) == "ACCEPTED"
    [reply] = decisions[-1].outgoing
    assert [c.value("RECURRENCE-ID") for c in reply.calendar.sub("VEVENT")] == [key]


def test_4_4_6_add_for_an_unknown_event_is_held_and_asks_for_a_refresh() -> None:
    decision, stored = att_process(ADD_446, None, att_context())
    assert decision.outcome == Outcome.HELD_PENDING
    assert stored is None
    assert [h.kind for h in decision.hold] == ["early-add"]
    [refresh] = decision.outgoing
    assert refresh.method == "REFRESH"
    [comp] = refresh.calendar.sub("VEVENT")
    assert comp.value("ATTENDEE") == "mailto:b@example.com"
    assert comp.value("UID") == "123456789@example.com"


def test_4_4_7_rescheduling_the_series_replaces_the_rule_and_asks_again() -> None:
    _decisions, stored = att_steps(att_context(policy="accept"), REQ_447)
    decision, stored = att_process(REQ_447_RESCHEDULE, stored, att_context(policy="tentative"))
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.instances[""].component.value("RRULE") == "WKST=SU;BYDAY=TU,TH;FREQ=WEEKLY"
    assert att_partstat(stored, "b@example.com") == "TENTATIVE"
    assert decision.outgoing[0].subject_kind == "tentative"


# --- 4.5 VTODO -----------------------------------------------------------------------

TODO_451 = (
    P
    + """METHOD:REQUEST
BEGIN:VTODO
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR:mailto:a@example.com
ATTENDEE;RSVP=TRUE:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;RSVP=TRUE:mailto:d@example.com
DTSTART:19970701T170000Z
DUE:19970722T170000Z
PRIORITY:1
SUMMARY:Create the requirements document
UID:calsrv.example.com-873970198738777-00@example.com
SEQUENCE:0
DTSTAMP:19970717T200000Z
STATUS:NEEDS-ACTION
END:VTODO
END:VCALENDAR
"""
)

TODO_456 = (
    P
    + """METHOD:REQUEST
BEGIN:VTODO
ORGANIZER:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;PARTSTAT=ACCEPTED;CUTYPE=INDIVIDUAL:mailto:b@example.com
ATTENDEE;PARTSTAT=COMPLETED;CUTYPE=INDIVIDUAL:mailto:d@example.com
DTSTART:19970701T170000Z
DUE:19970722T170000Z
PRIORITY:1
SUMMARY:Create the requirements document
UID:calsrv.example.com-873970198738777-00@example.com
SEQUENCE:1
DTSTAMP:19970718T100000Z
STATUS:NEEDS-ACTION
PERCENT-COMPLETE:40
END:VTODO
END:VCALENDAR
"""
)

TODO_4571 = (
    P
    + """METHOD:REQUEST
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
)


def test_4_5_1_vtodo_request_is_answered_with_a_vtodo_reply() -> None:
    decision, stored = att_process(TODO_451, None, att_context(policy="accept"))
    assert decision.outcome == Outcome.APPLIED
    [reply] = decision.outgoing
    [comp] = reply.calendar.sub("VTODO")
    assert comp.get_all("ATTENDEE")[0].param("PARTSTAT") == "ACCEPTED"
    assert comp.value("DUE") == "19970722T170000Z"
    assert att_partstat(stored, "b@example.com") == "ACCEPTED"
    # To-dos do not make the owner busy.
    assert not any(isinstance(c, ReplaceBusy) for c in decision.changes)


def test_4_5_6_updated_vtodo_without_significant_change_keeps_the_answer() -> None:
    _decisions, stored = att_steps(att_context(policy="accept"), TODO_451)
    decision, stored = att_process(TODO_456, stored, att_context(policy="decline"))
    assert decision.outcome == Outcome.APPLIED
    assert decision.outgoing == []
    assert att_partstat(stored, "b@example.com") == "ACCEPTED"
    assert stored is not None
    assert stored.instances[""].component.value("PERCENT-COMPLETE") == "40"
    assert ("", "c@example.com") not in stored.attendees


def test_4_5_7_recurring_vtodo_is_stored_as_a_series() -> None:
    decision, stored = att_process(TODO_4571, None, att_context(policy="tentative"))
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.is_recurring
    assert stored.header.component_type == "VTODO"
    assert decision.outgoing[0].calendar.sub("VTODO")[0].value("RRULE")


# --- 4.6 journal ---------------------------------------------------------------------

JOURNAL_46 = (
    P
    + """METHOD:PUBLISH
BEGIN:VJOURNAL
DTSTART:19971002T200000Z
DTSTAMP:19970717T233100Z
ORGANIZER:mailto:a@example.com
SUMMARY:Phone conference minutes
DESCRIPTION:The editors meeting was held on October 1, 1997.
  Details are in the attached document.
UID:0981234-1234234-2410@example.com
RELATED-TO:0981234-1234234-2402-35@example.com
ATTACH:ftp://ftp.example.com/pub/ed/minutes100197.txt
END:VJOURNAL
END:VCALENDAR
"""
)


def test_4_6_published_journal_entry_is_stored() -> None:
    decision, stored = att_process(JOURNAL_46, None, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.component_type == "VJOURNAL"
    assert (stored.instances[""].component.value("ATTACH") or "").startswith("ftp://")
    cancel = JOURNAL_46.replace("METHOD:PUBLISH", "METHOD:CANCEL").replace(
        "DTSTAMP:19970717T233100Z", "DTSTAMP:19970718T000000Z\nSEQUENCE:1\nSTATUS:CANCELLED"
    )
    decision, stored = att_process(cancel, stored, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert stored is not None
    assert stored.header.status == "CANCELLED"


def test_4_4_10_unknown_property_is_kept_not_refused() -> None:
    # The RFC shows a 3.0 reply for FOO:BAR; the section 3 tables allow IANA
    # properties (0+), so the gateway keeps FOO losslessly instead of refusing.
    text = REQ_442.replace("STATUS:CONFIRMED", "STATUS:CONFIRMED\nFOO:BAR")
    decision, stored = att_process(text, None, att_context())
    assert decision.outcome == Outcome.RECORDED
    assert stored is not None
    assert stored.instances[""].component.value("FOO") == "BAR"
