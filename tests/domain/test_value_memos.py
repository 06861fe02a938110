"""Remembered date-time decodings give exactly the fresh answers (issue 5).

:meth:`TzResolver.parse` remembers decoded values per resolver and
:func:`gateway.domain.recurrence.key_instant` remembers instance-key instants across
messages.  Both map strings to immutable values, so these tests pin the answers
(including errors, which are never remembered) and the bounds.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.domain import recurrence, timeutil
from gateway.domain.ical import Property, parse_one
from gateway.domain.recurrence import key_instant
from gateway.domain.timeutil import TzResolver

VTZ = (
    "BEGIN:VCALENDAR\r\nBEGIN:VTIMEZONE\r\nTZID:Custom/Zone\r\nBEGIN:STANDARD\r\n"
    "DTSTART:19700101T000000\r\nTZOFFSETFROM:+0300\r\nTZOFFSETTO:+0300\r\n"
    "END:STANDARD\r\nEND:VTIMEZONE\r\nEND:VCALENDAR\r\n"
)


def test_repeated_decoding_gives_equal_values_and_keeps_warnings_single() -> None:
    resolver = TzResolver.for_calendar(parse_one(VTZ))
    # (text, TZID, VALUE) as read from a property
    inputs: list[tuple[str, str | None, str | None]] = [
        ("20270101T100000Z", None, None),
        ("20270101T100000", "Europe/Berlin", None),
        ("20270101T100000", "Nowhere/Unknown", None),
        ("20270101", None, "DATE"),
        ("20270101T100000", "Custom/Zone", None),
    ]
    first = [resolver.parse(*args) for args in inputs]
    again = [resolver.parse(*args) for args in inputs]
    assert first == again
    assert first[0] == datetime(2027, 1, 1, 10, tzinfo=UTC)
    assert first[1] == datetime(2027, 1, 1, 10, tzinfo=ZoneInfo("Europe/Berlin"))
    assert first[3] == date(2027, 1, 1)
    assert isinstance(first[4], datetime)
    assert first[4].utcoffset() == timedelta(hours=3)
    assert resolver.warnings == [
        "unknown TZID 'Nowhere/Unknown' without usable VTIMEZONE; read as UTC"
    ]


def test_a_value_remembered_by_one_calendar_is_not_used_for_another() -> None:
    custom = TzResolver.for_calendar(parse_one(VTZ))
    plain = TzResolver()
    prop = Property("DTSTART", "20270101T100000", {"TZID": ["Custom/Zone"]})
    in_custom, in_plain = custom.value(prop), plain.value(prop)
    assert isinstance(in_custom, datetime)
    assert isinstance(in_plain, datetime)
    assert in_custom.utcoffset() == timedelta(hours=3)
    assert in_plain.tzinfo is UTC  # unknown here: read as UTC, with a warning
    assert plain.warnings


def test_bad_values_raise_every_time() -> None:
    resolver = TzResolver()
    for _ in range(3):
        with pytest.raises(ValueError, match="not a DATE or DATE-TIME"):
            resolver.parse("tomorrow")


def test_the_resolver_memo_is_bounded() -> None:
    resolver = TzResolver()
    for minute in range(timeutil._MAX_REMEMBERED + 50):
        resolver.parse(f"2027{1 + minute // 1440 % 12:02d}01T{minute % 1440 // 60:02d}0000Z")
    assert len(resolver._values) <= timeutil._MAX_REMEMBERED


def test_key_instant_answers_are_stable_and_bounded() -> None:
    cases = {
        "20270101T100000Z": datetime(2027, 1, 1, 10, tzinfo=UTC),
        "20270101T100000": datetime(2027, 1, 1, 10, tzinfo=UTC),
        "20270101": datetime(2027, 1, 1, tzinfo=UTC),
        "garbage": None,
        "": None,
    }
    for _ in range(2):
        assert {k: key_instant(k) for k in cases} == cases
    for i in range(recurrence._KEY_INSTANTS_MAX + 10):
        key_instant(f"2027{1 + i % 12:02d}{1 + i % 28:02d}T{i % 24:02d}{i % 60:02d}00Z")
    assert len(recurrence._KEY_INSTANTS) <= recurrence._KEY_INSTANTS_MAX
    assert {k: key_instant(k) for k in cases} == cases
