"""Bounded recurrence expansion (RFC 5545 3.8.5; RFC 5546 3.7.1 and 4.4.1)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.domain.ical import Component, parse_one
from gateway.domain.model import StoredInstance
from gateway.domain.recurrence import busy_periods, expand, occurrences
from gateway.domain.state import split_component
from gateway.domain.timeutil import TzResolver

WIDE = (datetime(1990, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))

# RFC 5546 section 4.4.1: 20 weekly Tuesdays, one RDATE, two EXDATEs.
RFC_441 = """BEGIN:VCALENDAR
BEGIN:VTIMEZONE
TZID:America-SanJose
BEGIN:STANDARD
DTSTART:19671029T020000
RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10
TZOFFSETFROM:-0700
TZOFFSETTO:-0800
TZNAME:PST
END:STANDARD
BEGIN:DAYLIGHT
DTSTART:19870405T020000
RRULE:FREQ=YEARLY;BYDAY=1SU;BYMONTH=4
TZOFFSETFROM:-0800
TZOFFSETTO:-0700
TZNAME:PDT
END:DAYLIGHT
END:VTIMEZONE
BEGIN:VEVENT
UID:calsrv.example.com-873970198738777@example.com
DTSTART;TZID=America-SanJose:19970701T140000
DTEND;TZID=America-SanJose:19970701T150000
RRULE:FREQ=WEEKLY;COUNT=20;WKST=SU;BYDAY=TU
RDATE;TZID=America-SanJose:19970910T140000
EXDATE;TZID=America-SanJose:19970909T140000
EXDATE;TZID=America-SanJose:19971028T140000
END:VEVENT
END:VCALENDAR
"""


def _event(text: str) -> tuple[Component, TzResolver]:
    cal = parse_one(text)
    return cal.sub("VEVENT")[0], TzResolver.for_calendar(cal)


def _simple(props: str) -> tuple[Component, TzResolver]:
    return _event(
        f"BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:x\n{props.strip()}\nEND:VEVENT\nEND:VCALENDAR\n"
    )


def test_rfc_4_4_1_series_has_19_rule_instances_plus_rdate_across_dst() -> None:
    comp, resolver = _event(RFC_441)
    occs = occurrences(comp, resolver, *WIDE, limit=100)
    # 20 RRULE instances - 2 EXDATEs + 1 RDATE.
    assert len(occs) == 19
    starts = [o.start for o in occs]
    assert starts[0] == datetime(1997, 7, 1, 21, 0, tzinfo=UTC)  # 14:00 PDT
    assert datetime(1997, 9, 9, 21, 0, tzinfo=UTC) not in starts  # EXDATE
    assert datetime(1997, 9, 10, 21, 0, tzinfo=UTC) in starts  # RDATE
    assert datetime(1997, 10, 28, 22, 0, tzinfo=UTC) not in starts  # EXDATE after DST end
    assert starts[-1] == datetime(1997, 11, 11, 22, 0, tzinfo=UTC)  # 14:00 PST
    assert all((o.end - o.start).total_seconds() == 3600 for o in occs)


def test_unbounded_rule_stops_at_limit() -> None:
    comp, resolver = _simple("DTSTART:20260105T090000Z\nDTEND:20260105T100000Z\nRRULE:FREQ=DAILY")
    assert len(expand(comp, resolver, *WIDE, limit=50)) == 50


def test_unbounded_rule_from_long_ago_reaches_the_window_quickly() -> None:
    comp, resolver = _simple("DTSTART:19700101T090000Z\nRRULE:FREQ=HOURLY;INTERVAL=5")
    window = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    spans = expand(comp, resolver, *window, limit=1000)
    assert len(spans) == 5  # every 5 hours in one day
    assert all(window[0] <= s < window[1] for s, _ in spans)


def test_weekly_fast_forward_keeps_the_weekday_and_local_time() -> None:
    comp, resolver = _simple(
        "DTSTART;TZID=Europe/Berlin:20000103T100000\nDTEND;TZID=Europe/Berlin:20000103T110000\n"
        "RRULE:FREQ=WEEKLY;BYDAY=MO,WE"
    )
    window = (datetime(2026, 7, 1, tzinfo=UTC), datetime(2026, 7, 15, tzinfo=UTC))
    spans = expand(comp, resolver, *window, limit=10)
    assert [s.isoformat() for s, _ in spans] == [
        "2026-07-01T08:00:00+00:00",  # Wednesday 10:00 CEST
        "2026-07-06T08:00:00+00:00",
        "2026-07-08T08:00:00+00:00",
        "2026-07-13T08:00:00+00:00",
    ]


def test_until_in_utc_with_floating_start_and_all_day_events() -> None:
    comp, resolver = _simple("DTSTART;VALUE=DATE:20260101\nRRULE:FREQ=DAILY;UNTIL=20260103T000000Z")
    occs = occurrences(comp, resolver, *WIDE, limit=10)
    assert [o.key for o in occs] == ["20260101", "20260102", "20260103"]
    assert occs[0].end - occs[0].start == datetime(2026, 1, 2) - datetime(2026, 1, 1)


def test_local_until_with_zoned_start_is_accepted() -> None:
    comp, resolver = _simple(
        "DTSTART;TZID=Europe/Berlin:20260101T100000\nRRULE:FREQ=DAILY;UNTIL=20260103T100000"
    )
    assert len(expand(comp, resolver, *WIDE, limit=10)) == 3


def test_invalid_rule_gives_first_instance_and_a_warning() -> None:
    comp, resolver = _simple("DTSTART:20260101T100000Z\nRRULE:FREQ=DAILY;BYMONTH=13")
    warnings: list[str] = []
    occs = occurrences(comp, resolver, *WIDE, limit=10, warnings=warnings)
    assert len(occs) == 1
    assert warnings


def test_minutely_rule_is_not_expanded() -> None:
    comp, resolver = _simple("DTSTART:20260101T100000Z\nRRULE:FREQ=MINUTELY")
    warnings: list[str] = []
    assert len(occurrences(comp, resolver, *WIDE, limit=10, warnings=warnings)) == 1
    assert "MINUTELY" in warnings[0]


def _instances(text: str) -> dict[str, StoredInstance]:
    cal = parse_one(text)
    resolver = TzResolver.for_calendar(cal)
    out: dict[str, StoredInstance] = {}
    for comp in cal.sub("VEVENT"):
        inst, _ = split_component(comp, resolver)
        out[inst.key] = inst
    return out


SERIES = """BEGIN:VCALENDAR
BEGIN:VEVENT
UID:s
DTSTART:20260105T090000Z
DTEND:20260105T100000Z
RRULE:FREQ=DAILY;COUNT=4
END:VEVENT
BEGIN:VEVENT
UID:s
RECURRENCE-ID:20260106T090000Z
DTSTART:20260106T150000Z
DTEND:20260106T160000Z
END:VEVENT
BEGIN:VEVENT
UID:s
RECURRENCE-ID:20260107T090000Z
DTSTART:20260107T090000Z
DTEND:20260107T100000Z
STATUS:CANCELLED
END:VEVENT
END:VCALENDAR
"""


def test_busy_periods_replace_overridden_and_drop_cancelled_instances() -> None:
    periods = busy_periods(_instances(SERIES), TzResolver(), *WIDE, limit=100, uid="s")
    assert [(p.start.day, p.start.hour) for p in periods] == [(5, 9), (6, 15), (8, 9)]
    assert {p.uid for p in periods} == {"s"}


def test_busy_periods_follow_the_owner_answer_and_transparency() -> None:
    instances = _instances(SERIES)
    tentative = busy_periods(
        instances, TzResolver(), *WIDE, limit=100, fbtype_for={"": "BUSY-TENTATIVE"}
    )
    assert {p.fbtype for p in tentative} == {"BUSY-TENTATIVE"}
    declined_override = busy_periods(
        instances, TzResolver(), *WIDE, limit=100, fbtype_for={"": "BUSY", "20260106T090000Z": ""}
    )
    assert [p.start.day for p in declined_override] == [5, 8]
    assert busy_periods(instances, TzResolver(), *WIDE, limit=100, object_cancelled=True) == ()
    instances[""].transp = "TRANSPARENT"
    assert [p.start.day for p in busy_periods(instances, TzResolver(), *WIDE, limit=100)] == [6]


def test_this_and_future_override_shifts_later_instances() -> None:
    instances = _instances(SERIES.replace("COUNT=4", "COUNT=6"))
    del instances["20260107T090000Z"]
    shifted, _ = split_component(
        parse_one(
            "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:s\n"
            "RECURRENCE-ID;RANGE=THISANDFUTURE:20260108T090000Z\n"
            "DTSTART:20260108T110000Z\nDTEND:20260108T113000Z\nEND:VEVENT\nEND:VCALENDAR\n"
        ).sub("VEVENT")[0],
        TzResolver(),
    )
    instances[shifted.key] = shifted
    periods = busy_periods(instances, TzResolver(), *WIDE, limit=100)
    assert [(p.start.day, p.start.hour, p.start.minute, p.end.minute) for p in periods] == [
        (5, 9, 0, 0),
        (6, 15, 0, 0),
        (7, 9, 0, 0),
        (8, 11, 0, 30),
        (9, 11, 0, 30),
        (10, 11, 0, 30),
    ]


def test_cancelled_this_and_future_override_frees_later_instances() -> None:
    instances = _instances(SERIES.replace("COUNT=4", "COUNT=6"))
    cut = instances["20260107T090000Z"]
    cut.this_and_future = True
    periods = busy_periods(instances, TzResolver(), *WIDE, limit=100)
    assert [p.start.day for p in periods] == [5, 6]
