"""The organiser removes instances of a series (RFC 5546 sections 3.2.5, 4.4.3).

A new EXDATE, a dropped RDATE or an override turned STATUS:CANCELLED is a CANCEL
carrying the RECURRENCE-ID of each removed instance, sent to that instance's
attendees; the answers everybody gave to the other instances stay.
"""

from __future__ import annotations

from gateway.domain import organizer
from gateway.domain.model import Context, DeleteInstance, Outcome, StoredObject
from gateway.domain.submission import submit
from tests.domain.helpers import org_apply, org_calendar, org_context, org_message
from tests.domain.test_submission import EVENT, OVERRIDE, with_override


def ctx() -> Context:
    return org_context(local=True)


def accepted_by_b_and_c() -> StoredObject:
    """The organiser copy of EVENT with b and c having accepted the series."""
    stored = org_apply(None, submit(org_calendar(EVENT), None, ctx()))
    for who in ("b@example.com", "c@example.com"):
        reply = (
            "BEGIN:VCALENDAR\nPRODID:-//T//EN\nVERSION:2.0\nMETHOD:REPLY\nBEGIN:VEVENT\n"
            "UID:sub-1@example.com\nORGANIZER:mailto:a@example.com\n"
            f"ATTENDEE;PARTSTAT=ACCEPTED:mailto:{who}\nSEQUENCE:0\n"
            "DTSTAMP:20260202T080000Z\nEND:VEVENT\nEND:VCALENDAR\n"
        )
        decision = organizer.process(org_message(reply), stored, org_context(sender=who))
        stored = org_apply(stored, decision)
    return stored


KEY = "20260316T090000Z"
MOVED = "20260309T090000Z"


def _exdate(text: str, *values: str) -> str:
    lines = "".join(f"\nEXDATE:{v}" for v in values)
    return text.replace("RRULE:FREQ=WEEKLY;COUNT=4", "RRULE:FREQ=WEEKLY;COUNT=4" + lines, 1)


def test_new_exdate_sends_cancel_with_recurrence_id_and_keeps_answers() -> None:
    # RFC 5546 3.2.5: "to cancel an individual instance ... the RECURRENCE-ID ... MUST
    # be specified"; 4.4.3 shows the CANCEL with STATUS:CANCELLED and a higher SEQUENCE.
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(_exdate(EVENT, KEY)), stored, ctx())
    assert d.outcome == Outcome.APPLIED
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert msg.instance_key == KEY
    assert set(msg.recipients) == {"b@example.com", "c@example.com"}
    (comp,) = msg.calendar.sub("VEVENT")
    assert comp.value("RECURRENCE-ID") == KEY
    assert comp.value("STATUS") == "CANCELLED"
    assert comp.value("SEQUENCE") == "1"  # above every SEQUENCE sent before
    assert comp.get("RRULE") is None
    after = org_apply(stored, d)
    # The organiser copy holds the EXDATE; the answers to the series stay.
    assert after.instances[""].component.value("EXDATE") == KEY
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    assert after.attendees[("", "c@example.com")].partstat == "ACCEPTED"
    # The master revision is unchanged, so series REPLYs at SEQUENCE 0 still apply
    # (RFC 5546 2.1.5); the CANCEL's own SEQUENCE marks the instance's revision.
    assert after.instances[""].sequence == 0
    assert "instance(s) removed" in d.reason


def test_two_new_exdates_give_one_cancel_with_two_components() -> None:
    # RFC 5546 3.2.5 b: several instances, several components with RECURRENCE-ID.
    stored = accepted_by_b_and_c()
    d = submit(org_calendar(_exdate(EVENT, KEY, "20260323T090000Z")), stored, ctx())
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert [c.value("RECURRENCE-ID") for c in msg.calendar.sub("VEVENT")] == [
        KEY,
        "20260323T090000Z",
    ]


def test_exdate_of_an_overridden_instance_cancels_it_for_its_own_attendees() -> None:
    first = accepted_by_b_and_c()
    text = with_override(OVERRIDE.replace("ATTENDEE;RSVP=TRUE:mailto:c@example.com\n", ""))
    stored = org_apply(first, submit(org_calendar(text), first, ctx()))
    assert (MOVED, "c@example.com") not in stored.attendees
    d = submit(org_calendar(_exdate(EVENT, MOVED)), stored, ctx())
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert msg.recipients == ("b@example.com",)  # c was not invited to that instance
    (comp,) = msg.calendar.sub("VEVENT")
    assert comp.value("RECURRENCE-ID") == MOVED
    assert comp.value("SEQUENCE") == "2"  # the override was at 1
    # The CANCEL shows that instance's own attendee list.
    assert "mailto:c@example.com" not in [p.value for p in comp.get_all("ATTENDEE")]
    assert DeleteInstance(MOVED) in d.changes
    after = org_apply(stored, d)
    assert MOVED not in after.instances
    assert after.attendees[("", "c@example.com")].partstat == "ACCEPTED"


def test_removed_rdate_sends_cancel_for_that_instance() -> None:
    base = EVENT.replace(
        "RRULE:FREQ=WEEKLY;COUNT=4", "RRULE:FREQ=WEEKLY;COUNT=4\nRDATE:20260401T090000Z"
    )
    stored = org_apply(None, submit(org_calendar(base), None, ctx()))
    d = submit(org_calendar(EVENT), stored, ctx())
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert msg.calendar.sub("VEVENT")[0].value("RECURRENCE-ID") == "20260401T090000Z"
    assert org_apply(stored, d).instances[""].component.get("RDATE") is None


def test_cancelled_override_sends_cancel_not_request_and_keeps_other_answers() -> None:
    stored = accepted_by_b_and_c()
    cancelled = (
        OVERRIDE.replace("DTSTART:20260309T140000Z", "DTSTART:20260309T090000Z")
        .replace("DTEND:20260309T150000Z", "DTEND:20260309T100000Z")
        .replace("SEQUENCE:0", "SEQUENCE:0\nSTATUS:CANCELLED")
    )
    d = submit(org_calendar(with_override(cancelled)), stored, ctx())
    (msg,) = d.outgoing
    assert msg.method == "CANCEL"
    assert msg.instance_key == MOVED
    (comp,) = msg.calendar.sub("VEVENT")
    assert comp.value("RECURRENCE-ID") == MOVED
    assert comp.value("STATUS") == "CANCELLED"
    assert comp.value("SEQUENCE") == "1"
    after = org_apply(stored, d)
    assert after.instances[MOVED].cancelled
    assert after.instances[MOVED].sequence == 1
    assert after.instances[""].sequence == 0
    assert after.attendees[("", "b@example.com")].partstat == "ACCEPTED"
    # Resubmitting the same file sends nothing more.
    again = submit(org_calendar(with_override(cancelled)), after, ctx())
    assert again.outgoing == []


def test_exdate_with_a_new_attendee_invites_them_and_cancels_for_the_others() -> None:
    stored = accepted_by_b_and_c()
    text = _exdate(EVENT, KEY).replace(
        "ATTENDEE;RSVP=TRUE:mailto:c@example.com",
        "ATTENDEE;RSVP=TRUE:mailto:c@example.com\nATTENDEE;RSVP=TRUE:mailto:d@example.com",
    )
    d = submit(org_calendar(text), stored, ctx())
    by_method = {m.method: m for m in d.outgoing}
    assert by_method["REQUEST"].recipients == ("d@example.com",)
    assert set(by_method["CANCEL"].recipients) == {"b@example.com", "c@example.com"}


def test_exdate_cancel_round_trip_attendee_copy_and_later_series_reply() -> None:
    # The CANCEL the organiser sends is what the attendee side expects (3.2.5): the
    # instance is cancelled on the attendee's copy, the series kept; a later series
    # REPLY from that attendee (SEQUENCE 0) is still applied by the organiser (2.1.5).
    from gateway.domain import engine
    from gateway.domain.ical import serialize
    from gateway.domain.message import parse_itip
    from tests.domain.helpers import att_context

    stored = accepted_by_b_and_c()
    request = organizer.render_request(stored, ctx())
    now = stored.instances[""].dtstamp
    assert now is not None
    bob_ctx = att_context(owner="b@example.com", sender="a@example.com", policy="accept", now=now)
    (req_msg,) = parse_itip(serialize(request)).messages
    bob = org_apply(None, engine.process(req_msg, None, bob_ctx))

    d = submit(org_calendar(_exdate(EVENT, KEY)), stored, ctx())
    organiser_copy = org_apply(stored, d)
    (cancel,) = d.outgoing
    (cancel_msg,) = parse_itip(serialize(cancel.calendar)).messages
    got = engine.process(cancel_msg, bob, bob_ctx)
    assert got.outcome == Outcome.APPLIED
    bob_after = org_apply(bob, got)
    assert bob_after.instances[KEY].cancelled
    assert not bob_after.instances[""].cancelled
    assert bob_after.header.status != "CANCELLED"

    reply = (
        "BEGIN:VCALENDAR\nPRODID:-//T//EN\nVERSION:2.0\nMETHOD:REPLY\nBEGIN:VEVENT\n"
        "UID:sub-1@example.com\nORGANIZER:mailto:a@example.com\n"
        "ATTENDEE;PARTSTAT=DECLINED:mailto:b@example.com\nSEQUENCE:0\n"
        "DTSTAMP:20260301T100000Z\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    (reply_msg,) = parse_itip(reply).messages
    answer = organizer.process(reply_msg, organiser_copy, org_context(sender="b@example.com"))
    assert answer.outcome == Outcome.APPLIED
    final = org_apply(organiser_copy, answer)
    assert final.attendees[("", "b@example.com")].partstat == "DECLINED"
