"""Property: REQUEST versions applied in any order end in the newest version (2.1.5)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.model import StoredObject
from tests.domain.helpers import att_context, att_process


def _version(seq: int) -> str:
    hour = 8 + seq
    return (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
        f"UID:prop@example.com\nSEQUENCE:{seq}\nDTSTAMP:20260201T10{seq:02d}00Z\n"
        f"DTSTART:20260310T{hour:02d}0000Z\nDTEND:20260310T{hour:02d}3000Z\nSUMMARY:v{seq}\n"
        "ORGANIZER:mailto:a@example.com\nATTENDEE;RSVP=TRUE:mailto:b@example.com\n"
        "END:VEVENT\nEND:VCALENDAR\n"
    )


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(6))), st.lists(st.integers(0, 5), max_size=4))
def test_shuffled_requests_end_in_the_newest_version(order: list[int], repeats: list[int]) -> None:
    stored: StoredObject | None = None
    for seq in [*order, *repeats]:
        _, stored = att_process(_version(seq), stored, att_context(policy="accept"))
    assert stored is not None
    master = stored.instances[""]
    assert master.sequence == 5
    assert master.component.text("SUMMARY") == "v5"
    assert stored.attendees[("", "b@example.com")].partstat == "ACCEPTED"
