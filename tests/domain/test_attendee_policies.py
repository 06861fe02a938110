"""Auto-processing policies and resource booking rules (issue 3), with the REPLY they send."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain import engine
from gateway.domain.model import BookingRules, BusyPeriod, Outcome
from tests.domain.helpers import (
    att_context,
    att_partstat,
    att_process,
    att_reply_lines,
    org_message,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
UID = "policy-1@example.com"


def invite(
    start: str = "20260310T090000Z",
    end: str = "20260310T100000Z",
    *,
    rrule: str = "",
    organizer: str = "a@example.com",
    owner: str = "b@example.com",
) -> str:
    rule = f"RRULE:{rrule}\n" if rrule else ""
    return (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
        f"UID:{UID}\nSEQUENCE:0\nDTSTAMP:20260301T000000Z\nDTSTART:{start}\nDTEND:{end}\n"
        f"{rule}SUMMARY:Planning\nORGANIZER:mailto:{organizer}\n"
        f"ATTENDEE;RSVP=TRUE:mailto:{owner}\nEND:VEVENT\nEND:VCALENDAR\n"
    )


def busy_at(*starts: str, hours: int = 1) -> tuple[BusyPeriod, ...]:
    out = []
    for start in starts:
        begin = datetime.strptime(start, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        out.append(BusyPeriod(begin, begin + timedelta(hours=hours), "BUSY", "other"))
    return tuple(out)


@pytest.mark.parametrize(
    ("policy", "partstat", "kind"),
    [("accept", "ACCEPTED", "accepted"), ("decline", "DECLINED", "declined"),
     ("tentative", "TENTATIVE", "tentative")],
)  # fmt: skip
def test_fixed_person_policies_answer_and_record(policy: str, partstat: str, kind: str) -> None:
    decision, stored = att_process(invite(), None, att_context(policy=policy, now=NOW))
    assert decision.outcome == Outcome.APPLIED
    [reply] = decision.outgoing
    assert reply.subject_kind == kind
    assert reply.auto
    assert att_reply_lines(decision, "ATTENDEE") == [
        f"ATTENDEE;PARTSTAT={partstat}:mailto:b@example.com"
    ]
    assert att_partstat(stored, "b@example.com") == partstat


def test_manual_policy_stores_for_the_user() -> None:
    decision, stored = att_process(invite(), None, att_context(policy="manual", now=NOW))
    assert decision.outcome == Outcome.RECORDED
    assert "stored for the user" in decision.reason
    assert decision.outgoing == []
    assert att_partstat(stored, "b@example.com") == "NEEDS-ACTION"


def test_accept_if_free_accepts_free_time() -> None:
    ctx = att_context(policy="accept-if-free", now=NOW, busy=busy_at("20260310T110000Z"))
    decision, _ = att_process(invite(), None, ctx)
    assert decision.outgoing[0].subject_kind == "accepted"


def test_accept_if_free_declines_a_conflict_with_a_reason() -> None:
    ctx = att_context(policy="accept-if-free", now=NOW, busy=busy_at("20260310T093000Z"))
    decision, stored = att_process(invite(), None, ctx)
    assert decision.outgoing[0].subject_kind == "declined"
    assert "conflicts with another event" in decision.reason
    assert att_reply_lines(decision, "COMMENT") == ["COMMENT:conflicts with another event"]
    assert att_partstat(stored, "b@example.com") == "DECLINED"


def test_accept_if_free_ignores_free_and_own_busy_periods() -> None:
    busy = (
        BusyPeriod(datetime(2026, 3, 10, 9, tzinfo=UTC), datetime(2026, 3, 10, 10, tzinfo=UTC),
                   "FREE", "other"),
        BusyPeriod(datetime(2026, 3, 10, 9, tzinfo=UTC), datetime(2026, 3, 10, 10, tzinfo=UTC),
                   "BUSY", UID),
    )  # fmt: skip
    decision, _ = att_process(
        invite(), None, att_context(policy="accept-if-free", now=NOW, busy=busy)
    )
    assert decision.outgoing[0].subject_kind == "accepted"


def test_accept_if_free_counts_conflicting_instances_of_a_series() -> None:
    busy = busy_at("20260311T090000Z", "20260313T093000Z", "20260315T084500Z")
    ctx = att_context(policy="accept-if-free", now=NOW, busy=busy)
    decision, _ = att_process(invite(rrule="FREQ=DAILY;COUNT=10"), None, ctx)
    assert "conflicts with 3 of 10 instances" in decision.reason
    assert decision.outgoing[0].subject_kind == "declined"


def test_busy_window_is_loaded_only_for_policies_that_look_at_it() -> None:
    msg = org_message(invite())
    assert engine.busy_window(msg, att_context(policy="accept", now=NOW)) is None
    window = engine.busy_window(msg, att_context(policy="accept-if-free", now=NOW))
    assert window == (NOW - timedelta(days=1), NOW + timedelta(days=400))
    room = att_context(kind="room", booking=BookingRules(), now=NOW)
    assert engine.busy_window(msg, room) is not None


# --- rooms and resources ---------------------------------------------------------------


def book(text: str, rules: BookingRules, busy: tuple[BusyPeriod, ...] = ()) -> tuple[str, str]:
    ctx = att_context(owner="room@example.com", kind="room", booking=rules, busy=busy, now=NOW)
    decision, stored = att_process(text.replace("b@example.com", "room@example.com"), None, ctx)
    assert len(decision.outgoing) == 1
    return att_partstat(stored, "room@example.com"), decision.reason


def test_room_inside_all_rules_is_accepted() -> None:
    rules = BookingRules(window_days=180, max_duration_minutes=120,
                         allowed_organizers=("@example.com",))  # fmt: skip
    assert book(invite(), rules)[0] == "ACCEPTED"


def test_room_declines_outside_the_booking_window() -> None:
    partstat, reason = book(
        invite("20270310T090000Z", "20270310T100000Z"), BookingRules(window_days=180)
    )
    assert partstat == "DECLINED"
    assert "outside the 180-day booking window" in reason


def test_room_declines_too_long_bookings() -> None:
    partstat, reason = book(invite(end="20260310T130000Z"), BookingRules(max_duration_minutes=120))
    assert partstat == "DECLINED"
    assert "lasts 240 minutes, longer than the 120-minute maximum" in reason


def test_room_declines_recurring_bookings_when_not_allowed() -> None:
    partstat, reason = book(
        invite(rrule="FREQ=WEEKLY;COUNT=4"), BookingRules(allow_recurring=False)
    )
    assert partstat == "DECLINED"
    assert "recurring bookings are not allowed" in reason


@pytest.mark.parametrize(
    ("allowed", "expected"),
    [(("a@example.com",), "ACCEPTED"), (("@example.com",), "ACCEPTED"),
     (("@other.example",), "DECLINED"), (("boss@example.com",), "DECLINED")],
)  # fmt: skip
def test_room_allowed_organisers_by_address_or_domain(
    allowed: tuple[str, ...], expected: str
) -> None:
    partstat, reason = book(invite(), BookingRules(allowed_organizers=allowed))
    assert partstat == expected
    if expected == "DECLINED":
        assert "a@example.com may not book this resource" in reason


def test_room_series_conflicts_within_the_allowance_are_accepted() -> None:
    busy = busy_at("20260311T090000Z", "20260313T090000Z")
    partstat, reason = book(
        invite(rrule="FREQ=DAILY;COUNT=10"), BookingRules(max_conflicting_instances=2), busy
    )
    assert partstat == "ACCEPTED"
    assert "2 of 10 instances conflict" in reason


def test_room_series_conflicts_beyond_count_and_percent_are_declined() -> None:
    busy = busy_at("20260311T090000Z", "20260313T090000Z", "20260315T090000Z")
    rules = BookingRules(max_conflicting_instances=2, max_conflict_percent=20.0)
    partstat, reason = book(invite(rrule="FREQ=DAILY;COUNT=10"), rules, busy)
    assert partstat == "DECLINED"
    assert "conflicts with 3 of 10 instances" in reason
    rules = BookingRules(max_conflicting_instances=2, max_conflict_percent=30.0)
    assert book(invite(rrule="FREQ=DAILY;COUNT=10"), rules, busy)[0] == "ACCEPTED"


def test_room_single_booking_conflict_is_always_declined() -> None:
    rules = BookingRules(max_conflicting_instances=5, max_conflict_percent=100.0)
    assert book(invite(), rules, busy_at("20260310T090000Z"))[0] == "DECLINED"


def test_unbounded_series_is_checked_within_the_horizon_and_limit() -> None:
    ctx = att_context(
        owner="room@example.com", kind="room", booking=BookingRules(), now=NOW, max_instances=50
    )
    text = invite(rrule="FREQ=DAILY").replace("b@example.com", "room@example.com")
    decision, _ = att_process(text, None, ctx)
    assert decision.outcome == Outcome.APPLIED
    assert att_reply_lines(decision, "ATTENDEE") == [
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:room@example.com"
    ]


def test_accept_if_free_accepts_a_todo_even_when_its_span_is_busy() -> None:
    todo = (
        invite(end="20260312T090000Z")
        .replace("VEVENT", "VTODO")
        .replace("DTEND:", "DUE:")
        .replace("SUMMARY:Planning\n", "SUMMARY:Planning\nPRIORITY:1\n")
    )
    ctx = att_context(policy="accept-if-free", now=NOW, busy=busy_at("20260311T090000Z"))
    decision, _ = att_process(todo, None, ctx)
    assert decision.outgoing[0].subject_kind == "accepted"
    assert "to-dos do not occupy time" in decision.reason


def test_room_series_within_allowance_declines_each_conflicting_instance() -> None:
    # Issue 3 "conflict handling for series": the series is accepted and every
    # conflicting instance declined on its own - one REPLY, the master ACCEPTED plus a
    # DECLINED component with RECURRENCE-ID per conflict (RFC 5546 3.2.3: a REPLY may
    # carry several components of one UID; 3.7.1: per-instance participation).
    busy = busy_at("20260311T090000Z", "20260313T093000Z")
    ctx = att_context(
        owner="room@example.com",
        kind="room",
        booking=BookingRules(max_conflicting_instances=2),
        busy=busy,
        now=NOW,
    )
    text = invite(rrule="FREQ=DAILY;COUNT=10").replace("b@example.com", "room@example.com")
    decision, stored = att_process(text, None, ctx)
    assert decision.outcome == Outcome.APPLIED
    (reply,) = decision.outgoing
    assert reply.method == "REPLY"
    assert reply.subject_kind == "accepted"
    comps = reply.calendar.sub("VEVENT")
    answers = {
        c.value("RECURRENCE-ID") or "": c.get("ATTENDEE").param("PARTSTAT")  # type: ignore[union-attr]
        for c in comps
    }
    assert answers == {
        "": "ACCEPTED",
        "20260311T090000Z": "DECLINED",
        "20260313T090000Z": "DECLINED",
    }
    declined = next(c for c in comps if c.value("RECURRENCE-ID") == "20260311T090000Z")
    assert declined.value("DTSTART") == "20260311T090000Z"
    assert declined.get("RRULE") is None
    assert "conflicts" in declined.text("COMMENT")
    # The room's copy records the instance-level answers.
    assert att_partstat(stored, "room@example.com") == "ACCEPTED"
    assert att_partstat(stored, "room@example.com", "20260311T090000Z") == "DECLINED"
    assert att_partstat(stored, "room@example.com", "20260313T090000Z") == "DECLINED"
    assert "2 of 10 instances conflict" in decision.reason
    # Busy time leaves the declined instances out.
    from gateway.domain.model import ReplaceBusy

    (busy_change,) = [c for c in decision.changes if isinstance(c, ReplaceBusy)]
    starts = {p.start for p in busy_change.periods}
    assert len(starts) == 8
    assert datetime(2026, 3, 11, 9, 0, tzinfo=UTC) not in starts
    assert datetime(2026, 3, 12, 9, 0, tzinfo=UTC) in starts


def test_room_series_beyond_allowance_reason_names_the_counts_and_the_allowance() -> None:
    busy = busy_at("20260311T090000Z", "20260313T090000Z", "20260315T090000Z")
    rules = BookingRules(max_conflicting_instances=2, max_conflict_percent=20.0)
    partstat, reason = book(invite(rrule="FREQ=DAILY;COUNT=10"), rules, busy)
    assert partstat == "DECLINED"
    assert "conflicts with 3 of 10 instances (allowed: at most 2 instance(s) or 20%)" in reason


def test_room_reply_with_declined_instances_is_applied_per_instance_by_the_organiser() -> None:
    # The organiser side reads the room's one REPLY component by component (3.2.3):
    # the series ACCEPTED, the conflicting instances DECLINED as overrides (3.7.1).
    from gateway.domain import organizer
    from gateway.domain.ical import serialize
    from gateway.domain.message import parse_itip
    from tests.domain.helpers import org_apply, org_context, org_stored

    busy = busy_at("20260311T090000Z")
    ctx = att_context(
        owner="room@example.com",
        kind="room",
        booking=BookingRules(max_conflict_percent=25.0),
        busy=busy,
        now=NOW,
    )
    text = invite(rrule="FREQ=DAILY;COUNT=10").replace("b@example.com", "room@example.com")
    decision, _ = att_process(text, None, ctx)
    (reply_msg,) = parse_itip(serialize(decision.outgoing[0].calendar)).messages
    stored = org_stored(text.replace("METHOD:REQUEST", "METHOD:PUBLISH"))
    applied = organizer.process(reply_msg, stored, org_context(sender="room@example.com"))
    assert applied.outcome == Outcome.APPLIED
    after = org_apply(stored, applied)
    assert after.attendees[("", "room@example.com")].partstat == "ACCEPTED"
    assert after.attendees[("20260311T090000Z", "room@example.com")].partstat == "DECLINED"
    assert ("20260312T090000Z", "room@example.com") not in after.attendees
