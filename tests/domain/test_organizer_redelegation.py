"""Re-delegation on the organiser side (RFC 5546 sections 2.1.2, 4.2.5, 4.2.6).

"It is possible for the original delegate to delegate the meeting to someone else"
(4.2.5): when a delegator delegates again to a different delegate, the earlier
delegate no longer attends on their behalf - it is removed and sent a CANCEL (the
attendee-removal CANCEL of section 3.2.5) - and the new delegate gets a REQUEST.
"""

from __future__ import annotations

from gateway.domain import organizer
from gateway.domain.model import DeleteAttendee, Outcome
from gateway.domain.model import StoredObject as _Stored
from tests.domain.helpers import org_apply, org_context, org_message, org_stored
from tests.domain.test_organizer_rfc_examples import REPLY_4_2_5, REQUEST_4_2_4, UID

REDELEGATE = f"""
BEGIN:VCALENDAR
PRODID:-//Example/ExampleCalendarClient//EN
METHOD:REPLY
VERSION:2.0
BEGIN:VEVENT
ORGANIZER:mailto:a@example.com
ATTENDEE;PARTSTAT=DELEGATED;DELEGATED-TO="mailto:f@example.com":mailto:c@example.com
ATTENDEE;DELEGATED-FROM="mailto:c@example.com":mailto:f@example.com
UID:{UID}
SEQUENCE:0
DTSTAMP:19970612T090000Z
END:VEVENT
END:VCALENDAR
"""


def _delegated_to_e() -> _Stored:
    stored = org_stored(REQUEST_4_2_4)
    return org_apply(
        stored,
        organizer.process(org_message(REPLY_4_2_5), stored, org_context(sender="c@example.com")),
    )


def test_redelegation_cancels_the_earlier_delegate_and_invites_the_new_one() -> None:
    stored = _delegated_to_e()
    assert ("", "e@example.com") in stored.attendees
    msg = org_message(REDELEGATE)
    assert organizer.load_plan(msg, "a@example.com").attendee_addresses is None
    decision = organizer.process(msg, stored, org_context(sender="c@example.com"))
    assert decision.outcome == Outcome.APPLIED
    assert DeleteAttendee("", "e@example.com") in decision.changes
    after = org_apply(stored, decision)
    assert ("", "e@example.com") not in after.attendees
    c = after.attendees[("", "c@example.com")]
    assert (c.partstat, c.delegated_to) == ("DELEGATED", ("f@example.com",))
    f = after.attendees[("", "f@example.com")]
    assert (f.partstat, f.delegated_from) == ("NEEDS-ACTION", ("c@example.com",))
    by_method = {m.method: m for m in decision.outgoing}
    assert set(by_method) == {"REQUEST", "CANCEL"}
    assert by_method["REQUEST"].recipients == ("f@example.com",)
    cancel = by_method["CANCEL"]
    assert cancel.recipients == ("e@example.com",)
    (comp,) = cancel.calendar.sub("VEVENT")
    # Section 3.2.5: a CANCEL naming only the removed attendee removes them.
    assert [p.value for p in comp.get_all("ATTENDEE")] == ["mailto:e@example.com"]
    assert comp.get("RECURRENCE-ID") is None
    assert comp.value("SEQUENCE") == "0"
    assert "earlier delegate(s) e@example.com cancelled" in decision.reason


def test_repeated_delegation_to_the_same_delegate_cancels_nobody() -> None:
    stored = _delegated_to_e()
    again = REPLY_4_2_5.replace("DTSTAMP:19970611T190000Z", "DTSTAMP:19970612T190000Z")
    decision = organizer.process(org_message(again), stored, org_context(sender="c@example.com"))
    assert decision.outcome == Outcome.APPLIED
    assert not any(m.method == "CANCEL" for m in decision.outgoing)
    assert ("", "e@example.com") in org_apply(stored, decision).attendees


def test_delegate_also_delegated_by_someone_else_keeps_the_seat() -> None:
    stored = _delegated_to_e()
    by_b = REPLY_4_2_5.replace("mailto:c@example.com", "mailto:b@example.com")
    stored = org_apply(
        stored,
        organizer.process(org_message(by_b), stored, org_context(sender="b@example.com")),
    )
    assert stored.attendees[("", "e@example.com")].delegated_from == (
        "c@example.com",
        "b@example.com",
    )
    decision = organizer.process(
        org_message(REDELEGATE), stored, org_context(sender="c@example.com")
    )
    after = org_apply(stored, decision)
    assert after.attendees[("", "e@example.com")].delegated_from == ("b@example.com",)
    assert not any(m.method == "CANCEL" for m in decision.outgoing)
