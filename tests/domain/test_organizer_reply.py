"""REPLY to a local organiser: table tests (RFC 5546 sections 2.1.5, 3.2.3, 3.7, 5.2, 6.1).

Each case is (stored copy, incoming REPLY, context) -> expected outcome and rows.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from gateway.domain import organizer
from gateway.domain.identity import AuthVerdict, SenderIdentity
from gateway.domain.model import Outcome, PutAttendee, PutInstance, Role
from tests.domain.helpers import org_apply, org_context, org_message, org_stored

SERIES = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:STANDARD
DTSTART:19701025T030000
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19700329T020000
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
UID:series-1@example.com
ORGANIZER;CN=Org:mailto:a@example.com
ATTENDEE;ROLE=CHAIR;PARTSTAT=ACCEPTED:mailto:a@example.com
ATTENDEE;RSVP=TRUE;CN=Bob:mailto:b@example.com
ATTENDEE;RSVP=TRUE:mailto:c@example.com
ATTENDEE;CUTYPE=GROUP:mailto:team@example.com
DTSTART;TZID=Europe/Berlin:20260302T100000
DTEND;TZID=Europe/Berlin:20260302T110000
RRULE:FREQ=WEEKLY;COUNT=10
SUMMARY:Weekly
SEQUENCE:2
DTSTAMP:20260201T080000Z
END:VEVENT
END:VCALENDAR
"""

# 2026-03-09 10:00 Berlin = 09:00Z (before DST); 2026-03-30 10:00 Berlin = 08:00Z.
INSTANCE = "20260309T090000Z"


def reply(
    who: str = "b@example.com",
    partstat: str = "ACCEPTED",
    seq: int = 2,
    stamp: str = "20260210T100000Z",
    rid: str = "",
    extra: str = "",
    organizer_line: str = "ORGANIZER:mailto:a@example.com",
    params: str = "",
) -> str:
    rid_line = f"RECURRENCE-ID{rid}\n" if rid else ""
    return f"""
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VEVENT
UID:series-1@example.com
{organizer_line}
ATTENDEE;PARTSTAT={partstat}{params}:mailto:{who}
{extra}{rid_line}SEQUENCE:{seq}
DTSTAMP:{stamp}
END:VEVENT
END:VCALENDAR
"""


def run(text: str, stored: object = None, **ctx: object):  # type: ignore[no-untyped-def]
    st = org_stored(SERIES) if stored is None else stored
    sender = ctx.pop("sender", "b@example.com")
    decision = organizer.process(org_message(text), st, org_context(sender=sender, **ctx))  # type: ignore[arg-type]
    return st, decision


# --- per attendee, per instance ordering (RFC 5546 section 2.1.5) --------------------------


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ((2, "20260210T100000Z"), (2, "20260210T100000Z"), Outcome.DUPLICATE),
        ((2, "20260210T100000Z"), (2, "20260209T100000Z"), Outcome.IGNORED_STALE),
        ((3, "20260210T100000Z"), (2, "20260211T100000Z"), Outcome.IGNORED_STALE),
        ((2, "20260210T100000Z"), (2, "20260211T100000Z"), Outcome.APPLIED),
        ((2, "20260210T100000Z"), (3, "20260201T100000Z"), Outcome.APPLIED),
    ],
)
def test_second_reply_of_the_same_attendee_is_ordered_by_sequence_then_dtstamp(
    first: tuple[int, str], second: tuple[int, str], outcome: Outcome
) -> None:
    st, d1 = run(reply(seq=first[0], stamp=first[1]))
    assert d1.outcome == Outcome.APPLIED
    after = org_apply(st, d1)
    _, d2 = run(reply(partstat="DECLINED", seq=second[0], stamp=second[1]), after)
    assert d2.outcome == outcome, d2.reason
    final = org_apply(after, d2)
    expected = "DECLINED" if outcome == Outcome.APPLIED else "ACCEPTED"
    assert final.attendees[("", "b@example.com")].partstat == expected
    if outcome != Outcome.APPLIED:
        assert d2.changes == []


def test_ordering_is_per_attendee_an_older_reply_of_another_attendee_applies() -> None:
    st, d1 = run(reply(stamp="20260215T100000Z"))
    after = org_apply(st, d1)
    _, d2 = run(reply(who="c@example.com", stamp="20260201T100000Z"), after, sender="c@example.com")
    assert d2.outcome == Outcome.APPLIED


def test_ordering_is_per_instance_an_instance_reply_does_not_race_the_series() -> None:
    st, d1 = run(reply(stamp="20260215T100000Z"))
    after = org_apply(st, d1)
    # Newer instance reply after the series reply: applies to the instance only.
    _, d2 = run(reply(partstat="DECLINED", stamp="20260216T100000Z", rid=f":{INSTANCE}"), after)
    assert d2.outcome == Outcome.APPLIED
    final = org_apply(after, d2)
    assert final.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    assert final.attendees[(INSTANCE, "b@example.com")].partstat == "DECLINED"


def test_reply_to_an_outdated_sequence_is_stale_with_the_reason() -> None:
    _, d = run(reply(seq=1))
    assert d.outcome == Outcome.IGNORED_STALE
    assert "SEQUENCE 1" in d.reason
    assert "revision is 2" in d.reason
    assert d.changes == []


# --- instances (RFC 5546 section 3.7.1) ------------------------------------------------


def test_instance_reply_creates_an_override_and_leaves_the_series_alone() -> None:
    st, d = run(reply(partstat="DECLINED", rid=";TZID=Europe/Berlin:20260309T100000"))
    assert d.outcome == Outcome.APPLIED
    assert d.recurrence_id == INSTANCE
    (put_inst,) = [c for c in d.changes if isinstance(c, PutInstance)]
    comp = put_inst.instance.component
    assert comp.get("RRULE") is None
    rid = comp.get("RECURRENCE-ID")
    assert rid is not None
    assert rid.param("TZID") == "Europe/Berlin"
    assert rid.value == "20260309T100000"
    assert comp.value("DTSTART") == "20260309T100000"
    assert comp.value("DTEND") == "20260309T110000"
    assert put_inst.instance.sequence == 2
    after = org_apply(st, d)
    assert after.instances[""] == st.instances[""]
    assert {a for (k, a) in after.attendees if k == INSTANCE} == {
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "team@example.com",
    }
    assert after.attendees[(INSTANCE, "b@example.com")].partstat == "DECLINED"
    assert after.attendees[("", "b@example.com")].partstat == "NEEDS-ACTION"


def test_instance_reply_matches_the_instance_by_instant_not_by_text() -> None:
    st, d1 = run(reply(partstat="DECLINED", rid=f":{INSTANCE}"))
    after = org_apply(st, d1)
    _, d2 = run(
        reply(
            partstat="TENTATIVE",
            stamp="20260211T100000Z",
            rid=";TZID=Europe/Berlin:20260309T100000",
        ),
        after,
    )
    assert d2.outcome == Outcome.APPLIED
    assert not any(isinstance(c, PutInstance) for c in d2.changes)  # same override
    assert org_apply(after, d2).attendees[(INSTANCE, "b@example.com")].partstat == "TENTATIVE"


def test_instance_reply_for_a_time_that_is_no_instance_is_rejected() -> None:
    _, d = run(reply(rid=":20260310T090000Z"))
    assert d.outcome == Outcome.REJECTED_INVALID
    assert d.changes == []


def test_series_reply_updates_overrides_without_newer_instance_answers() -> None:
    st, d1 = run(reply(partstat="DECLINED", stamp="20260210T100000Z", rid=f":{INSTANCE}"))
    after = org_apply(st, d1)
    _, d2 = run(reply(partstat="ACCEPTED", stamp="20260211T100000Z"), after)
    final = org_apply(after, d2)
    assert final.attendees[(INSTANCE, "b@example.com")].partstat == "ACCEPTED"
    # ... but not an override whose instance-specific answer is newer.
    _, d3 = run(reply(partstat="DECLINED", stamp="20260213T100000Z", rid=f":{INSTANCE}"), final)
    final2 = org_apply(final, d3)
    # Newer than the series answer (11th) but older than the instance answer (13th).
    _, d4 = run(reply(partstat="TENTATIVE", stamp="20260212T100000Z", seq=2), final2)
    final3 = org_apply(final2, d4)
    assert final3.attendees[("", "b@example.com")].partstat == "TENTATIVE"
    assert final3.attendees[(INSTANCE, "b@example.com")].partstat == "DECLINED"


def test_this_and_future_reply_marks_the_override_and_updates_later_ones() -> None:
    later = "20260330T080000Z"
    st, d1 = run(reply(partstat="DECLINED", stamp="20260210T100000Z", rid=f":{later}"))
    after = org_apply(st, d1)
    _, d2 = run(
        reply(
            partstat="TENTATIVE", stamp="20260211T100000Z", rid=f";RANGE=THISANDFUTURE:{INSTANCE}"
        ),
        after,
    )
    assert d2.outcome == Outcome.APPLIED
    final = org_apply(after, d2)
    assert final.instances[INSTANCE].this_and_future
    rid = final.instances[INSTANCE].component.get("RECURRENCE-ID")
    assert rid is not None
    assert rid.param("RANGE") == "THISANDFUTURE"
    assert final.attendees[(INSTANCE, "b@example.com")].partstat == "TENTATIVE"
    assert final.attendees[(later, "b@example.com")].partstat == "TENTATIVE"
    assert final.attendees[("", "b@example.com")].partstat == "NEEDS-ACTION"


def test_instance_reply_load_plan_asks_for_all_rows() -> None:
    plan = organizer.load_plan(org_message(reply(rid=f":{INSTANCE}")), "a@example.com")
    assert plan.attendee_addresses is None


# --- interop -----------------------------------------------------------------------------


def test_outlook_reply_without_organizer_uses_the_stored_one() -> None:
    _, d = run(reply(organizer_line=""))
    assert d.outcome == Outcome.APPLIED
    assert any("no ORGANIZER" in w for w in d.warnings)


def test_reply_naming_every_attendee_uses_the_one_matching_the_sender() -> None:
    extra = "ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:c@example.com\n"
    extra += "ATTENDEE;PARTSTAT=ACCEPTED;ROLE=CHAIR:mailto:a@example.com\n"
    _st, d = run(reply(partstat="TENTATIVE", extra=extra))
    assert d.outcome == Outcome.APPLIED
    assert [c.attendee.address for c in d.changes if isinstance(c, PutAttendee)] == [
        "b@example.com"
    ]
    assert any("allows one" in w for w in d.warnings)


def test_reply_naming_several_attendees_none_the_sender_is_rejected() -> None:
    extra = "ATTENDEE;PARTSTAT=ACCEPTED:mailto:c@example.com\n"
    _, d = run(reply(extra=extra), sender="x@example.com")
    assert d.outcome == Outcome.REJECTED_INVALID
    assert d.changes == []


def test_received_parameters_are_kept_and_state_is_taken_from_the_line() -> None:
    st, d = run(reply(params=";X-NUM-GUESTS=2;CN=Bobby", extra="REQUEST-STATUS:2.0;Success\n"))
    row = org_apply(st, d).attendees[("", "b@example.com")]
    assert row.prop.param("X-NUM-GUESTS") == "2"
    assert row.prop.param("CN") == "Bobby"
    assert row.request_status == "2.0;Success"
    assert row.role == "REQ-PARTICIPANT"


# --- authorisation (RFC 5546 section 6.1.2) ----------------------------------------------


def test_reply_sent_by_someone_else_is_refused() -> None:
    _, d = run(reply(), sender="mallory@example.net")
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "mallory@example.net" in d.reason
    assert d.changes == []


def test_reply_sent_by_the_attendees_sent_by_is_accepted() -> None:
    _, d = run(
        reply(params=';SENT-BY="mailto:assistant@example.com"'), sender="assistant@example.com"
    )
    assert d.outcome == Outcome.APPLIED


def test_dmarc_failure_refuses_even_a_matching_from() -> None:
    _, d = run(reply(), dmarc=AuthVerdict.FAIL)
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "DMARC" in d.reason


def test_local_submission_may_reply_for_anyone() -> None:
    _, d = run(reply(), sender="", local=True)
    assert d.outcome == Outcome.APPLIED


def test_trusted_relay_reply_to_counts_as_the_attendee() -> None:
    st = org_stored(SERIES)
    ctx = org_context()
    ctx = replace(
        ctx,
        sender=SenderIdentity(
            from_addresses=("calendar-notification@google.com",),
            reply_to=("b@example.com",),
            trusted_relay=True,
        ),
    )
    d = organizer.process(org_message(reply()), st, ctx)
    assert d.outcome == Outcome.APPLIED


# --- unknown UID, roles ----------------------------------------------------------------------


def test_first_reply_for_an_unknown_uid_is_held_not_dropped() -> None:
    d = organizer.process(org_message(reply()), None, org_context(sender="b@example.com"))
    assert d.outcome == Outcome.HELD_PENDING
    (hold,) = d.hold
    assert (hold.kind, hold.sender, hold.method, hold.sequence) == (
        "early-reply",
        "b@example.com",
        "REPLY",
        2,
    )
    assert hold.dtstamp == datetime(2026, 2, 10, 10, 0, tzinfo=UTC)
    assert "series-1@example.com" in hold.payload
    assert "5.2.1" in d.reason


def test_early_reply_naming_another_organiser_is_not_held() -> None:
    text = reply(organizer_line="ORGANIZER:mailto:z@elsewhere.example")
    d = organizer.process(org_message(text), None, org_context(sender="b@example.com"))
    assert d.outcome == Outcome.IGNORED_UNKNOWN
    assert d.hold == []


def test_forged_early_reply_is_refused_rather_than_held() -> None:
    d = organizer.process(org_message(reply()), None, org_context(sender="m@example.net"))
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert d.hold == []


def test_reply_for_an_event_the_owner_only_attends_is_ignored() -> None:
    st = org_stored(SERIES, role=Role.ATTENDEE)
    _, d = run(reply(), st)
    assert d.outcome == Outcome.IGNORED_POLICY
    assert "attendee" in d.reason


# --- group members (RFC 5546 section 3.7.2) ----------------------------------------------


def test_member_of_an_invited_group_is_added_as_an_individual() -> None:
    text = reply(who="dave@example.com", params=';MEMBER="mailto:team@example.com"')
    msg = org_message(text)
    assert "team@example.com" in (
        organizer.load_plan(msg, "a@example.com").attendee_addresses or ()
    )
    st, d = run(text, sender="dave@example.com", party_crashers="ignore")
    assert d.outcome == Outcome.APPLIED
    row = org_apply(st, d).attendees[("", "dave@example.com")]
    assert (row.partstat, row.cutype, row.member) == (
        "ACCEPTED",
        "INDIVIDUAL",
        ("team@example.com",),
    )
    assert org_apply(st, d).attendees[("", "team@example.com")].partstat == "NEEDS-ACTION"


def test_member_claim_of_a_non_group_attendee_is_a_party_crasher() -> None:
    text = reply(who="dave@example.com", params=';MEMBER="mailto:c@example.com"')
    _, d = run(text, sender="dave@example.com", party_crashers="ignore")
    assert d.outcome == Outcome.IGNORED_POLICY


# --- COUNTER ---------------------------------------------------------------------------------


def counter(who: str = "b@example.com", seq: int = 2, stamp: str = "20260210T100000Z") -> str:
    return f"""
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:COUNTER
BEGIN:VEVENT
UID:series-1@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:{who}
DTSTART:20260302T120000Z
DTEND:20260302T130000Z
SUMMARY:Weekly
SEQUENCE:{seq}
DTSTAMP:{stamp}
END:VEVENT
END:VCALENDAR
"""


def test_counter_supersedes_an_older_pending_proposal_of_the_same_attendee() -> None:
    from gateway.domain.model import HeldItem, ResolveHeld

    st = org_stored(SERIES)
    st.held = [
        HeldItem(
            3, "counter", "b@example.com", "COUNTER", "x", "", 2, datetime(2026, 2, 9, tzinfo=UTC)
        ),
    ]
    _, d = run(counter(), st)
    assert d.outcome == Outcome.RECORDED
    assert d.changes == [ResolveHeld(3, "superseded")]
    assert len(d.hold) == 1


def test_counter_from_a_non_attendee_is_refused() -> None:
    _, d = run(counter(who="x@example.com"), sender="x@example.com")
    assert d.outcome == Outcome.REJECTED_UNAUTHORISED
    assert d.hold == []


def test_counter_to_an_outdated_sequence_is_stale() -> None:
    _, d = run(counter(seq=1))
    assert d.outcome == Outcome.IGNORED_STALE
    assert d.hold == []


# --- one message, several components; large events ----------------------------------------


def test_reply_with_series_and_instance_components_applies_both() -> None:
    text = reply(partstat="ACCEPTED").replace(
        "END:VEVENT\n",
        "END:VEVENT\nBEGIN:VEVENT\nUID:series-1@example.com\nORGANIZER:mailto:a@example.com\n"
        f"ATTENDEE;PARTSTAT=DECLINED:mailto:b@example.com\nRECURRENCE-ID:{INSTANCE}\n"
        "SEQUENCE:2\nDTSTAMP:20260210T100000Z\nEND:VEVENT\n",
    )
    st, d = run(text)
    assert d.outcome == Outcome.APPLIED
    after = org_apply(st, d)
    # Same DTSTAMP: the instance-specific answer outranks the series one.
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    assert after.attendees[(INSTANCE, "b@example.com")].partstat == "DECLINED"


def test_reply_to_a_large_event_touches_one_row_when_only_that_row_is_loaded() -> None:
    st = org_stored(SERIES)
    many = {
        ("", f"p{i}@example.com"): replace(
            st.attendees[("", "c@example.com")], address=f"p{i}@example.com"
        )
        for i in range(1000)
    }
    st.attendees.update(many)
    plan = organizer.load_plan(org_message(reply()), "a@example.com")
    assert plan.attendee_addresses == frozenset({"b@example.com"})
    loaded = replace(
        st,
        attendees={k: v for k, v in st.attendees.items() if k[1] in plan.attendee_addresses},
        attendees_complete=False,
    )
    _, d = run(reply(), loaded)
    assert d.outcome == Outcome.APPLIED
    assert len(d.changes) == 1
    assert isinstance(d.changes[0], PutAttendee)


def test_vfreebusy_reply_is_not_held_as_an_early_reply() -> None:
    text = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
METHOD:REPLY
BEGIN:VFREEBUSY
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
DTSTAMP:20260210T100000Z
DTSTART:20260301T000000Z
DTEND:20260308T000000Z
FREEBUSY:20260302T090000Z/PT1H
UID:fb-1@example.com
END:VFREEBUSY
END:VCALENDAR
"""
    d = organizer.process(org_message(text), None, org_context(sender="b@example.com"))
    assert d.outcome == Outcome.IGNORED_UNSUPPORTED
    assert d.hold == []
