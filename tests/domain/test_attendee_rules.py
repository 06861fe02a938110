"""Attendee-side rules as (incoming, stored, expected) tables (RFC 5546 sections 2-6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.domain.identity import AuthVerdict
from gateway.domain.model import Outcome, ReleaseHeld, ReplaceBusy, StoredObject
from tests.domain.helpers import (
    att_context,
    att_partstat,
    att_process,
    att_reply_lines,
    att_steps,
)

UID = "rule-1@example.com"


def event(
    *,
    seq: int = 0,
    stamp: str = "20260201T100000Z",
    start: str = "20260310T090000Z",
    end: str = "20260310T100000Z",
    extra: str = "",
    attendees: str = "ATTENDEE;RSVP=TRUE:mailto:b@example.com\nATTENDEE:mailto:c@example.com\n",
    method: str = "REQUEST",
    organizer: str = "ORGANIZER:mailto:a@example.com\n",
    rid: str = "",
    calendar_extra: str = "",
    comp: str = "VEVENT",
) -> str:
    rid_line = f"RECURRENCE-ID:{rid}\n" if rid else ""
    return (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\n"
        f"METHOD:{method}\n{calendar_extra}BEGIN:{comp}\nUID:{UID}\n{rid_line}"
        f"SEQUENCE:{seq}\nDTSTAMP:{stamp}\nDTSTART:{start}\nDTEND:{end}\nSUMMARY:Rule\n"
        f"{organizer}{attendees}{extra}END:{comp}\nEND:VCALENDAR\n"
    )


def stored_after(*texts: str, policy: str = "accept") -> StoredObject:
    _, stored = att_steps(att_context(policy=policy), *texts)
    assert stored is not None
    return stored


# --- ordering (2.1.4, 2.1.5) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("seq", "stamp", "expected"),
    [
        (0, "20260201T100000Z", Outcome.DUPLICATE),
        (0, "20260101T100000Z", Outcome.IGNORED_STALE),
        (1, "20260101T100000Z", Outcome.RECORDED),  # higher SEQUENCE wins over DTSTAMP
        (0, "20260202T100000Z", Outcome.APPLIED),  # same SEQUENCE, later DTSTAMP
    ],
)
def test_request_ordering_against_stored_version(seq: int, stamp: str, expected: Outcome) -> None:
    stored = stored_after(event())
    # The start moves with every newer version so the change is significant for seq 1;
    # the DTSTAMP-only case keeps the time (not significant: answer kept).
    start = "20260311T090000Z" if seq else "20260310T090000Z"
    end = "20260311T100000Z" if seq else "20260310T100000Z"
    decision, _ = att_process(
        event(seq=seq, stamp=stamp, start=start, end=end), stored, att_context()
    )
    assert decision.outcome == expected


def test_ordering_is_per_instance() -> None:
    series = event(extra="RRULE:FREQ=DAILY;COUNT=5\n")
    override = event(
        seq=2,
        rid="20260311T090000Z",
        start="20260311T150000Z",
        end="20260311T160000Z",
        stamp="20260203T100000Z",
    )
    stored = stored_after(series, override)
    # An older override (seq 1) is stale for that instance even though it is newer
    # than the series (seq 0).
    older = override.replace("SEQUENCE:2", "SEQUENCE:1")
    decision, _ = att_process(older, stored, att_context())
    assert decision.outcome == Outcome.IGNORED_STALE
    assert decision.recurrence_id == "20260311T090000Z"
    # The series itself at seq 0 with the same stamp is a duplicate, not stale.
    decision, _ = att_process(series, stored, att_context())
    assert decision.outcome == Outcome.DUPLICATE


def test_huge_sequence_is_clamped_and_ordered() -> None:
    huge = event(seq=1407317367304)
    decisions, stored = att_steps(att_context(policy="accept"), event(), huge, event(seq=5))
    assert [d.outcome for d in decisions] == [
        Outcome.APPLIED,
        Outcome.APPLIED,
        Outcome.IGNORED_STALE,
    ]
    assert stored is not None
    assert stored.instances[""].sequence == 1407317367304


# --- merge, never replace --------------------------------------------------------------

ALARM = "BEGIN:VALARM\nACTION:DISPLAY\nTRIGGER:-PT15M\nDESCRIPTION:mine\nEND:VALARM\n"


def _with_owner_data(stored: StoredObject) -> StoredObject:
    """The owner set an alarm and made the event transparent in their client."""
    master = stored.instances[""]
    master.component.components.append(
        __import__("gateway.domain.ical", fromlist=["parse"]).parse(ALARM)[0]
    )
    master.component.set("TRANSP", "TRANSPARENT")
    master.transp = "TRANSPARENT"
    return stored


def test_minor_update_keeps_partstat_alarms_and_transp() -> None:
    stored = _with_owner_data(stored_after(event()))
    update = event(seq=0, stamp="20260205T100000Z", extra="DESCRIPTION:agenda added\n")
    decision, after = att_process(update, stored, att_context(policy="decline"))
    assert decision.outcome == Outcome.APPLIED
    assert decision.outgoing == []
    assert att_partstat(after, "b@example.com") == "ACCEPTED"
    assert after is not None
    master = after.instances[""]
    assert master.component.text("DESCRIPTION") == "agenda added"
    assert [a.text("DESCRIPTION") for a in master.component.sub("VALARM")] == ["mine"]
    assert master.component.value("TRANSP") == "TRANSPARENT"
    # Transparent time is free time.
    assert [c for c in decision.changes if isinstance(c, ReplaceBusy)] == [ReplaceBusy(())]


@pytest.mark.parametrize(
    "change",
    [
        {"start": "20260310T110000Z", "end": "20260310T120000Z"},
        {"extra": "LOCATION:Room 2\n"},
        {"extra": "RRULE:FREQ=WEEKLY\n"},
        {"extra": "STATUS:TENTATIVE\n"},
    ],
)
def test_significant_change_resets_partstat(change: dict[str, str]) -> None:
    stored = stored_after(event())
    decision, after = att_process(event(seq=1, **change), stored, att_context())
    assert "significant" in decision.reason
    assert att_partstat(after, "b@example.com") == "NEEDS-ACTION"


def test_configured_significance_decides() -> None:
    stored = stored_after(event())
    ctx = att_context()
    ctx = type(ctx)(**{**ctx.__dict__, "significant": frozenset({"DTSTART"})})
    _, after = att_process(event(seq=1, extra="LOCATION:elsewhere\n"), stored, ctx)
    assert att_partstat(after, "b@example.com") == "ACCEPTED"


def test_new_series_version_drops_overrides_it_does_not_repeat() -> None:
    series = event(extra="RRULE:FREQ=DAILY;COUNT=5\n")
    override = event(seq=0, rid="20260311T090000Z", stamp="20260202T100000Z")
    stored = stored_after(series, override)
    assert "20260311T090000Z" in stored.instances
    rescheduled = event(seq=1, start="20260310T080000Z", end="20260310T090000Z",
                        extra="RRULE:FREQ=DAILY;COUNT=5\n")  # fmt: skip
    _, after = att_process(rescheduled, stored, att_context())
    assert after is not None
    assert set(after.instances) == {""}


# --- recurrence instances and THISANDFUTURE -------------------------------------------


def test_one_instance_cancel_creates_a_cancelled_override_from_the_series() -> None:
    stored = stored_after(event(extra="RRULE:FREQ=DAILY;COUNT=3\n"))
    cancel = event(method="CANCEL", seq=1, rid="20260311T090000Z", extra="STATUS:CANCELLED\n")
    decision, after = att_process(cancel, stored, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert after is not None
    inst = after.instances["20260311T090000Z"]
    assert inst.cancelled
    assert inst.start == datetime(2026, 3, 11, 9, 0, tzinfo=UTC)
    assert inst.component.get("RRULE") is None
    assert not after.instances[""].cancelled
    assert after.header.status != "CANCELLED"


def test_this_and_future_cancel_cancels_later_overrides_and_frees_later_time() -> None:
    series = event(extra="RRULE:FREQ=DAILY;COUNT=5\n")
    late_override = event(rid="20260313T090000Z", start="20260313T120000Z",
                          end="20260313T130000Z", stamp="20260202T000000Z")  # fmt: skip
    stored = stored_after(series, late_override)
    cancel = event(method="CANCEL", seq=1, extra="STATUS:CANCELLED\n")
    cancel = cancel.replace(
        "SEQUENCE:1\n", "RECURRENCE-ID;RANGE=THISANDFUTURE:20260312T090000Z\nSEQUENCE:1\n"
    )
    decision, after = att_process(cancel, stored, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert "all later ones" in decision.reason
    assert after is not None
    assert after.instances["20260312T090000Z"].this_and_future
    assert after.instances["20260313T090000Z"].cancelled
    assert not after.instances[""].cancelled


def test_recurrence_id_in_another_zone_matches_by_instant() -> None:
    stored = stored_after(event(extra="RRULE:FREQ=DAILY;COUNT=3\n"))
    cancel = event(method="CANCEL", seq=1, extra="STATUS:CANCELLED\n").replace(
        "SEQUENCE:1\n", "RECURRENCE-ID;TZID=Europe/Berlin:20260311T100000\nSEQUENCE:1\n"
    )
    _, after = att_process(cancel, stored, att_context())
    assert after is not None
    assert after.instances["20260311T090000Z"].cancelled


# --- early and late arrivals (5.2.1) ----------------------------------------------------


def test_cancel_before_request_is_held_and_request_releases_it() -> None:
    cancel = event(method="CANCEL", seq=1, extra="STATUS:CANCELLED\n")
    decision, stored = att_process(cancel, None, att_context())
    assert decision.outcome == Outcome.HELD_PENDING
    assert stored is None
    [held] = decision.hold
    assert held.kind == "early-cancel"
    assert held.sequence == 1
    assert "METHOD:CANCEL" in held.payload
    request, stored = att_process(event(), None, att_context())
    assert request.release == [ReleaseHeld("b@example.com", UID)]
    # The service then re-runs the held CANCEL against the stored copy.
    rerun, after = att_process(held.payload, stored, att_context())
    assert rerun.outcome == Outcome.APPLIED
    assert after is not None
    assert after.header.status == "CANCELLED"


def test_duplicate_cancel_is_reported_as_duplicate() -> None:
    cancel = event(method="CANCEL", seq=1, extra="STATUS:CANCELLED\n")
    decisions, _ = att_steps(att_context(), event(), cancel, cancel)
    assert [d.outcome for d in decisions][1:] == [Outcome.APPLIED, Outcome.DUPLICATE]


def test_cancel_naming_only_other_attendees_removes_them() -> None:
    stored = stored_after(event())
    cancel = event(method="CANCEL", seq=1, attendees="ATTENDEE:mailto:c@example.com\n")
    decision, after = att_process(cancel, stored, att_context())
    assert decision.outcome == Outcome.APPLIED
    assert after is not None
    assert ("", "c@example.com") not in after.attendees
    assert not after.instances[""].cancelled


# --- authorisation (6.1) -------------------------------------------------------------


def test_update_from_someone_else_is_refused_naming_both() -> None:
    stored = stored_after(event())
    decision, _after = att_process(event(seq=3), stored, att_context(sender="mallory@evil.example"))
    assert decision.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "mallory@evil.example" in decision.reason
    assert "a@example.com" in decision.reason
    assert decision.changes == []


def test_sent_by_only_counts_when_it_was_stored() -> None:
    with_sent_by = 'ORGANIZER;SENT-BY="mailto:assistant@example.com":mailto:a@example.com\n'
    stored = stored_after(event(organizer=with_sent_by))
    ok, _ = att_process(
        event(seq=1, organizer=with_sent_by), stored, att_context(sender="assistant@example.com")
    )
    assert ok.outcome != Outcome.REJECTED_UNAUTHORISED
    plain = stored_after(event())
    forged = event(seq=1, organizer=with_sent_by.replace("assistant", "mallory"))
    refused, _ = att_process(forged, plain, att_context(sender="mallory@example.com"))
    assert refused.outcome == Outcome.REJECTED_UNAUTHORISED


def test_dmarc_failure_refuses_even_the_organiser_address() -> None:
    decision, _ = att_process(event(), None, att_context(dmarc=AuthVerdict.FAIL))
    assert decision.outcome == Outcome.REJECTED_UNAUTHORISED
    assert "DMARC" in decision.reason


def test_local_submission_bypasses_the_sender_check() -> None:
    decision, _ = att_process(event(), None, att_context(sender=(), local=True))
    assert decision.outcome == Outcome.RECORDED


def test_new_invitation_forwarded_by_an_attendee_is_stored_but_not_answered() -> None:
    # c@example.com forwards the invitation to f@example.com (3.2.2.6).  Only the
    # attendee vouches for the ORGANIZER line, so no automatic answer goes out.
    ctx = att_context(owner="f@example.com", sender="c@example.com", policy="accept")
    decision, stored = att_process(event(), None, ctx)
    assert decision.outcome == Outcome.RECORDED
    assert "forwarded by c@example.com" in decision.reason
    assert decision.outgoing == []
    assert att_partstat(stored, "f@example.com") == "NEEDS-ACTION"


def test_uninvited_recipient_of_the_organisers_mail_is_answered_by_policy() -> None:
    # The organiser's own mail reached f@example.com (Bcc, list): policy applies and the
    # reply adds f as the RFC allows the uninvited CU to do (3.2.2.6).
    ctx = att_context(owner="f@example.com", policy="accept")
    decision, stored = att_process(event(), None, ctx)
    assert decision.outcome == Outcome.APPLIED
    assert "not in the ATTENDEE list" in decision.reason
    assert att_partstat(stored, "f@example.com") == "ACCEPTED"
    [reply] = decision.outgoing
    assert reply.recipients == ("a@example.com",)
    assert att_reply_lines(decision, "ATTENDEE") == [
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:f@example.com"
    ]


def test_message_where_owner_is_organizer_is_not_an_invitation() -> None:
    decision, stored = att_process(event(), None, att_context(owner="a@example.com"))
    assert decision.outcome == Outcome.IGNORED_LOOP
    assert stored is None


def test_delegate_receives_request_with_delegated_from() -> None:
    attendees = (
        'ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO="mailto:b@example.com":mailto:c@example.com\n'
        'ATTENDEE;RSVP=TRUE;DELEGATED-FROM="mailto:c@example.com":mailto:b@example.com\n'
    )
    decision, stored = att_process(event(attendees=attendees), None, att_context(policy="accept"))
    assert "delegated by c@example.com" in decision.reason
    assert stored is not None
    assert stored.attendees[("", "b@example.com")].delegated_from == ("c@example.com",)
    [line] = att_reply_lines(decision, "ATTENDEE")
    assert "DELEGATED-FROM" in line
    assert "PARTSTAT=ACCEPTED" in line


# --- restriction violations -> REQUEST-STATUS replies (3.6) ------------------------------


def test_invalid_request_with_rsvp_gets_request_status_reply() -> None:
    bad = event(extra="RRULE:FREQ=SOMETIMES\n")
    decision, stored = att_process(bad, None, att_context(policy="accept"))
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert stored is None
    assert att_reply_lines(decision, "REQUEST-STATUS") == ["REQUEST-STATUS:3.6;Invalid rule;RRULE"]
    assert decision.outgoing[0].subject_kind == "status"


def test_invalid_request_without_rsvp_is_refused_silently() -> None:
    bad = event(
        extra="RRULE:FREQ=SOMETIMES\n", attendees="ATTENDEE;RSVP=FALSE:mailto:b@example.com\n"
    )
    decision, _ = att_process(bad, None, att_context())
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert decision.outgoing == []


def test_invalid_request_from_a_stranger_gets_no_reply_backscatter() -> None:
    bad = event(extra="RRULE:FREQ=SOMETIMES\n")
    decision, _ = att_process(bad, None, att_context(sender="spoofer@example.net"))
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert decision.outgoing == []


def test_too_many_attendees_is_3_10() -> None:
    decision, _ = att_process(event(), None, att_context(max_attendees=1))
    assert decision.outcome == Outcome.REJECTED_INVALID
    assert att_reply_lines(decision, "REQUEST-STATUS") == [
        "REQUEST-STATUS:3.10;Request entity too large;ATTENDEE"
    ]


# --- interop ----------------------------------------------------------------------------


def test_windows_tzid_without_vtimezone_is_resolved() -> None:
    text = (
        event(start="X", end="Y")
        .replace("DTSTART:X", "DTSTART;TZID=W. Europe Standard Time:20260310T100000")
        .replace("DTEND:Y", "DTEND;TZID=W. Europe Standard Time:20260310T110000")
    )
    decision, stored = att_process(text, None, att_context())
    assert decision.outcome == Outcome.RECORDED
    assert stored is not None
    assert stored.instances[""].start == datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


def test_unknown_tzid_without_vtimezone_falls_back_with_warning() -> None:
    text = event(start="X").replace("DTSTART:X", "DTSTART;TZID=BRT:20260310T090000")
    decision, stored = att_process(text, None, att_context())
    assert decision.outcome == Outcome.RECORDED
    assert any("BRT" in w for w in decision.warnings)
    assert stored is not None


def test_reply_carries_the_vtimezone_it_uses() -> None:
    vtz = (
        "BEGIN:VTIMEZONE\nTZID:Europe/Berlin\nBEGIN:STANDARD\nDTSTART:19701025T030000\n"
        "TZOFFSETFROM:+0200\nTZOFFSETTO:+0100\nEND:STANDARD\nEND:VTIMEZONE\n"
    )
    text = event(start="X", end="Y", calendar_extra=vtz)
    text = text.replace("DTSTART:X", "DTSTART;TZID=Europe/Berlin:20260310T100000")
    text = text.replace("DTEND:Y", "DTEND;TZID=Europe/Berlin:20260310T110000")
    decision, _ = att_process(text, None, att_context(policy="accept"))
    [reply] = decision.outgoing
    assert [z.value("TZID") for z in reply.calendar.sub("VTIMEZONE")] == ["Europe/Berlin"]


def test_rsvp_false_records_the_answer_without_reply() -> None:
    text = event(attendees="ATTENDEE;RSVP=FALSE:mailto:b@example.com\n")
    decision, stored = att_process(text, None, att_context(policy="accept"))
    assert decision.outgoing == []
    assert att_partstat(stored, "b@example.com") == "ACCEPTED"


def test_declinecounter_is_recorded_on_the_owner_row() -> None:
    stored = stored_after(event())
    text = event(method="DECLINECOUNTER", extra="COMMENT:Sorry\\, no\nREQUEST-STATUS:2.0;Success\n")
    decision, after = att_process(text, stored, att_context())
    assert decision.outcome == Outcome.RECORDED
    assert "Sorry, no" in decision.reason
    assert after is not None
    assert after.attendees[("", "b@example.com")].request_status == "2.0;Success"


def test_declinecounter_for_unknown_event_is_ignored() -> None:
    decision, _ = att_process(event(method="DECLINECOUNTER"), None, att_context())
    assert decision.outcome == Outcome.IGNORED_UNKNOWN


def test_freebusy_request_from_a_forger_is_refused() -> None:
    fb = (
        "BEGIN:VCALENDAR\nPRODID:x\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VFREEBUSY\nUID:f\n"
        "DTSTAMP:20260101T000000Z\nORGANIZER:mailto:a@example.com\nATTENDEE:mailto:b@example.com\n"
        "DTSTART:20260101T000000Z\nDTEND:20260102T000000Z\nEND:VFREEBUSY\nEND:VCALENDAR\n"
    )
    decision, _ = att_process(fb, None, att_context(sender="x@evil.example"))
    assert decision.outcome == Outcome.REJECTED_UNAUTHORISED
    assert decision.outgoing == []
    other, _ = att_process(fb, None, att_context(owner="z@example.com"))
    assert other.outcome == Outcome.IGNORED_NOT_LOCAL


def test_invitation_through_a_group_replies_as_member() -> None:
    # Section 3.7.2: the owner is reached through the group's address.
    attendees = "ATTENDEE;CUTYPE=GROUP;RSVP=TRUE:mailto:team@example.com\n"
    decision, stored = att_process(event(attendees=attendees), None, att_context(policy="accept"))
    assert "member of team@example.com" in decision.reason
    assert stored is not None
    assert stored.attendees[("", "b@example.com")].member == ("team@example.com",)
    [line] = att_reply_lines(decision, "ATTENDEE")
    assert 'MEMBER="mailto:team@example.com"' in line


def test_cancelled_override_inside_a_request_is_stored_but_not_answered() -> None:
    series = event(extra="RRULE:FREQ=DAILY;COUNT=3\n")
    cancelled = event(rid="20260311T090000Z", extra="STATUS:CANCELLED\n")
    both = series.replace("END:VCALENDAR\n", "") + cancelled.split("METHOD:REQUEST\n")[1]
    decision, stored = att_process(both, None, att_context(policy="accept"))
    assert stored is not None
    assert stored.instances["20260311T090000Z"].cancelled
    [reply] = decision.outgoing
    assert [c.get("RECURRENCE-ID") for c in reply.calendar.sub("VEVENT")] == [None]


def test_cancel_of_an_instance_of_an_unknown_series_asks_for_a_refresh() -> None:
    lone = event(rid="20260311T090000Z")  # Exchange sends lone overrides
    stored = stored_after(lone)
    cancel = event(method="CANCEL", seq=1, rid="20260312T090000Z", extra="STATUS:CANCELLED\n")
    decision, _ = att_process(cancel, stored, att_context())
    assert decision.outcome == Outcome.IGNORED_UNKNOWN
    assert [m.method for m in decision.outgoing] == ["REFRESH"]


def test_load_plan_asks_for_all_rows_and_held_items_on_request() -> None:
    from gateway.domain import engine
    from tests.domain.helpers import org_message

    plan = engine.load_plan(org_message(event()), "b@example.com")
    assert plan.attendee_addresses is None
    assert plan.held
    cancel = engine.load_plan(org_message(event(method="CANCEL", seq=1)), "b@example.com")
    assert not cancel.held


def _todo(method: str, seq: int, extra: str = "") -> str:
    return (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\n"
        f"METHOD:{method}\nBEGIN:VTODO\nUID:todo-1@example.com\nSEQUENCE:{seq}\n"
        "DTSTAMP:20260201T100000Z\nDTSTART:20260310T090000Z\nDUE:20260312T090000Z\n"
        "PRIORITY:1\nSUMMARY:Write\nORGANIZER:mailto:a@example.com\n"
        f"ATTENDEE;RSVP=TRUE:mailto:b@example.com\n{extra}END:VTODO\nEND:VCALENDAR\n"
    )


def test_vtodo_instance_cancel_keeps_the_series() -> None:
    series = _todo("REQUEST", 0, "RRULE:FREQ=WEEKLY;COUNT=4\n")
    cancel = _todo("CANCEL", 1, "RECURRENCE-ID:20260317T090000Z\nSTATUS:CANCELLED\n")
    decisions, stored = att_steps(att_context(policy="accept"), series, cancel)
    assert [d.outcome for d in decisions] == [Outcome.APPLIED, Outcome.APPLIED]
    assert stored is not None
    assert stored.instances["20260317T090000Z"].cancelled
    assert not stored.instances[""].cancelled
    # The override was built from the series with DUE's length kept as DURATION.
    assert stored.instances["20260317T090000Z"].end == datetime(2026, 3, 19, 9, tzinfo=UTC)


def test_vjournal_add_and_cancel_follow_the_published_entry() -> None:
    journal = (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\nMETHOD:PUBLISH\nBEGIN:VJOURNAL\n"
        "UID:j-1@example.com\nSEQUENCE:0\nDTSTAMP:20260201T100000Z\nDTSTART:20260301\n"
        "RRULE:FREQ=WEEKLY;COUNT=2\nDESCRIPTION:minutes\nORGANIZER:mailto:a@example.com\n"
        "END:VJOURNAL\nEND:VCALENDAR\n"
    )
    add = journal.replace("METHOD:PUBLISH", "METHOD:ADD").replace("SEQUENCE:0", "SEQUENCE:1")
    add = add.replace("DTSTART:20260301\nRRULE:FREQ=WEEKLY;COUNT=2\n", "DTSTART:20260320\n")
    cancel = journal.replace("METHOD:PUBLISH", "METHOD:CANCEL").replace("SEQUENCE:0", "SEQUENCE:2")
    decisions, stored = att_steps(att_context(), journal, add, cancel)
    assert [d.outcome for d in decisions] == [Outcome.APPLIED] * 3
    assert stored is not None
    assert "20260320" in stored.instances
    assert stored.header.status == "CANCELLED"
    assert all(d.outgoing == [] for d in decisions)


def test_this_and_future_request_moves_later_overrides_and_changes_their_properties() -> None:
    # RFC 5546 4.4.5 / RFC 5545 3.8.4.4: RANGE=THISANDFUTURE changes the instance and
    # all later ones - an existing later override is moved by the same offset and takes
    # the changed LOCATION; an earlier override is left alone.
    series = event(extra="RRULE:FREQ=DAILY;COUNT=5\nLOCATION:Room 1\n")
    early = event(rid="20260311T090000Z", start="20260311T070000Z", end="20260311T080000Z",
                  stamp="20260202T000000Z", extra="LOCATION:Room 1\n")  # fmt: skip
    late = event(rid="20260313T090000Z", start="20260313T120000Z", end="20260313T130000Z",
                 stamp="20260202T000000Z", extra="LOCATION:Room 1\nDESCRIPTION:own\n")  # fmt: skip
    stored = stored_after(series, early, late)
    change = event(seq=1, start="20260312T110000Z", end="20260312T120000Z",
                   stamp="20260203T000000Z", extra="LOCATION:Room 9\n")  # fmt: skip
    change = change.replace(
        "SEQUENCE:1\n", "RECURRENCE-ID;RANGE=THISANDFUTURE:20260312T090000Z\nSEQUENCE:1\n"
    )
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # busy time is kept around "now"
    decision, after = att_process(change, stored, att_context(policy="accept", now=now))
    assert decision.outcome == Outcome.APPLIED
    assert after is not None
    rng = after.instances["20260312T090000Z"]
    assert rng.this_and_future
    moved = after.instances["20260313T090000Z"]
    # +2 hours, as the range instance moved from 09:00 to 11:00.
    assert moved.start == datetime(2026, 3, 13, 14, 0, tzinfo=UTC)
    assert moved.end == datetime(2026, 3, 13, 15, 0, tzinfo=UTC)
    assert moved.component.text("LOCATION") == "Room 9"
    assert moved.component.text("DESCRIPTION") == "own"  # not changed by the range
    assert moved.sequence == 1
    earlier = after.instances["20260311T090000Z"]
    assert earlier.start == datetime(2026, 3, 11, 7, 0, tzinfo=UTC)
    assert earlier.component.text("LOCATION") == "Room 1"
    # The owner answered the range; the later override carries the same answer.
    assert att_partstat(after, "b@example.com", "20260313T090000Z") == "ACCEPTED"
    # Busy time follows: later instances at 11:00 (shifted), the override at 14:00.
    (busy,) = [c for c in decision.changes if isinstance(c, ReplaceBusy)]
    starts = sorted(p.start for p in busy.periods)
    assert datetime(2026, 3, 14, 11, 0, tzinfo=UTC) in starts
    assert datetime(2026, 3, 13, 14, 0, tzinfo=UTC) in starts
    assert datetime(2026, 3, 14, 9, 0, tzinfo=UTC) not in starts
    assert datetime(2026, 3, 10, 9, 0, tzinfo=UTC) in starts  # before the range: unchanged


def test_this_and_future_request_with_new_length_sets_later_overrides_length() -> None:
    series = event(extra="RRULE:FREQ=DAILY;COUNT=5\n")
    late = event(rid="20260314T090000Z", start="20260314T100000Z", end="20260314T110000Z",
                 stamp="20260202T000000Z")  # fmt: skip
    stored = stored_after(series, late)
    change = event(seq=1, start="20260312T090000Z", end="20260312T113000Z",
                   stamp="20260203T000000Z")  # fmt: skip
    change = change.replace(
        "SEQUENCE:1\n", "RECURRENCE-ID;RANGE=THISANDFUTURE:20260312T090000Z\nSEQUENCE:1\n"
    )
    _, after = att_process(change, stored, att_context(policy="accept"))
    assert after is not None
    moved = after.instances["20260314T090000Z"]
    assert moved.start == datetime(2026, 3, 14, 10, 0, tzinfo=UTC)  # no shift
    assert moved.end == datetime(2026, 3, 14, 12, 30, tzinfo=UTC)  # 2h30 like the range
