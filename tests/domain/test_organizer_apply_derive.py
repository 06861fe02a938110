"""The pure helpers behind the organiser engine: in-memory apply and instance derivation.

``apply_changes`` must mirror the store's semantics (DeleteInstance takes the
instance's attendee rows with it); ``derive_instance`` writes the override in the
master's own form (RFC 5546 section 3.7.1: RECURRENCE-ID = the instance's start).
"""

from __future__ import annotations

from gateway.domain.apply import apply_changes
from gateway.domain.derive import derive_instance, key_to_value
from gateway.domain.model import DeleteInstance, ResolveHeld
from gateway.domain.timeutil import TzResolver, instance_key
from tests.domain.helpers import org_stored

ALL_DAY = """
BEGIN:VCALENDAR
PRODID:-//T//EN
VERSION:2.0
BEGIN:VEVENT
UID:d@example.com
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
DTSTART;VALUE=DATE:20260302
DTEND;VALUE=DATE:20260303
RRULE:FREQ=WEEKLY
SUMMARY:Holiday
DTSTAMP:20260201T080000Z
END:VEVENT
BEGIN:VEVENT
UID:d@example.com
RECURRENCE-ID;VALUE=DATE:20260309
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
DTSTART;VALUE=DATE:20260310
DTEND;VALUE=DATE:20260311
DTSTAMP:20260201T080000Z
END:VEVENT
END:VCALENDAR
"""


def test_delete_instance_removes_its_attendee_rows_and_leaves_the_input_alone() -> None:
    stored = org_stored(ALL_DAY)
    after = apply_changes(stored, [DeleteInstance("20260309"), ResolveHeld(1, "x")])
    assert after is not None
    assert set(after.instances) == {""}
    assert set(after.attendees) == {("", "b@example.com")}
    assert "20260309" in stored.instances  # not mutated


def test_derived_all_day_instance_keeps_the_date_form() -> None:
    stored = org_stored(ALL_DAY)
    inst = derive_instance(stored.instances[""], "20260316", TzResolver())
    comp = inst.component
    rid = comp.get("RECURRENCE-ID")
    assert rid is not None
    assert (rid.value, rid.param("VALUE")) == ("20260316", "DATE")
    assert comp.value("DTSTART") == "20260316"
    assert comp.value("DTEND") == "20260317"
    assert comp.get("RRULE") is None


def test_keys_round_trip() -> None:
    for key in ("20260316", "20260316T090000Z", "20260316T090000"):
        assert instance_key(key_to_value(key)) == key
