"""Outlook recurrence blobs -> RRULE/EXDATE and a VTIMEZONE (for :mod:`gateway.mime.tnef`).

Two MAPI properties describe a recurring Outlook meeting:

- PidLidAppointmentRecur, an AppointmentRecurrencePattern (MS-OXOCAL 2.2.1.44.5):
  frequency, pattern type, period, end type, occurrence count, deleted and modified
  instance dates, first/last date (minutes since 1601-01-01, *local* midnight) and the
  start/end offsets of each occurrence (minutes after local midnight);
- PidLidTimeZoneStruct, a TZSTRUCT (MS-OXOCAL 2.2.1.39): bias and the two yearly
  transition rules, which become an RFC 5545 VTIMEZONE so the RRULE expands in local
  time across DST changes.

What is not translated is refused with a reason (:class:`RecurrenceError`): Hijri
calendars and occurrences modified individually (their new details live in embedded
exception messages this decoder does not read; dropping them would misinform).
"""

from __future__ import annotations

import struct
from calendar import monthrange
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "Recurrence",
    "RecurrenceError",
    "parse_recurrence",
    "utc_offset_minutes",
    "vtimezone",
]

_EPOCH = datetime(1601, 1, 1)
_DAYS = ("SU", "MO", "TU", "WE", "TH", "FR", "SA")  # bit 0 = Sunday (MS-OXOCAL 2.2.1.44.1.2)

_FREQ_DAILY, _FREQ_WEEKLY, _FREQ_MONTHLY, _FREQ_YEARLY = 0x200A, 0x200B, 0x200C, 0x200D
_PT_DAY, _PT_WEEK, _PT_MONTH, _PT_MONTH_NTH, _PT_MONTH_END = 0x0, 0x1, 0x2, 0x3, 0x4
_END_DATE, _END_COUNT = 0x2021, 0x2022


class RecurrenceError(ValueError):
    """The recurrence cannot be expressed faithfully in iCalendar."""


@dataclass(frozen=True, slots=True)
class Recurrence:
    first_start: datetime  # local (naive) start of the first occurrence
    duration: timedelta
    rrule: str  # RRULE value without the "RRULE:" prefix
    exdates: tuple[datetime, ...]  # local (naive) starts of deleted occurrences
    until_local: datetime | None


def _minutes(value: int) -> datetime:
    return _EPOCH + timedelta(minutes=value)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise RecurrenceError("recurrence blob is truncated")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)


def _weekdays(mask: int) -> list[str]:
    return [day for bit, day in enumerate(_DAYS) if mask & (1 << bit)]


def parse_recurrence(blob: bytes) -> Recurrence:
    """Decode PidLidAppointmentRecur; raises :class:`RecurrenceError`."""
    r = _Reader(blob)
    r.take("<H")  # ReaderVersion 0x3004
    r.take("<H")  # WriterVersion
    freq = r.take("<H")
    pattern = r.take("<H")
    calendar_type = r.take("<H")
    r.take("<I")  # FirstDateTime
    period = r.take("<I")
    r.take("<I")  # SlidingFlag (tasks only)
    mask = nth = day_of_month = 0
    if pattern == _PT_WEEK:
        mask = r.take("<I")
    elif pattern in (_PT_MONTH, _PT_MONTH_END):
        day_of_month = r.take("<I")
    elif pattern == _PT_MONTH_NTH:
        mask = r.take("<I")
        nth = r.take("<I")
    elif pattern != _PT_DAY:
        raise RecurrenceError(
            f"recurrence pattern type {pattern:#x} (Hijri calendar) not supported"
        )
    if calendar_type not in (0, 1):  # default / Gregorian
        raise RecurrenceError(f"non-Gregorian recurrence calendar type {calendar_type:#x}")
    end_type = r.take("<I")
    count = r.take("<I")
    first_dow = r.take("<I")
    deleted = [r.take("<I") for _ in range(r.take("<I"))]
    modified = [r.take("<I") for _ in range(r.take("<I"))]
    start_date = r.take("<I")
    end_date = r.take("<I")
    r.take("<I")  # ReaderVersion2
    r.take("<I")  # WriterVersion2
    start_offset = r.take("<I")
    end_offset = r.take("<I")
    if modified:
        raise RecurrenceError(
            f"{len(modified)} individually modified occurrence(s): their details are in "
            "exception messages that are not converted"
        )

    parts: list[str] = []
    if freq == _FREQ_DAILY and pattern == _PT_DAY:
        parts += ["FREQ=DAILY", f"INTERVAL={max(1, period // 1440)}"]
    elif freq in (_FREQ_DAILY, _FREQ_WEEKLY) and pattern == _PT_WEEK:
        # Daily "every weekday" is stored as a weekly pattern with a day mask.
        days = _weekdays(mask)
        if not days:
            raise RecurrenceError("weekly recurrence without any weekday")
        parts += ["FREQ=WEEKLY", f"INTERVAL={max(1, period)}", "BYDAY=" + ",".join(days)]
        if 0 <= first_dow < 7:
            parts.append(f"WKST={_DAYS[first_dow]}")
    elif freq in (_FREQ_MONTHLY, _FREQ_YEARLY):
        first = _minutes(start_date)
        if freq == _FREQ_YEARLY:
            parts += ["FREQ=YEARLY", f"INTERVAL={max(1, period // 12)}", f"BYMONTH={first.month}"]
        else:
            parts += ["FREQ=MONTHLY", f"INTERVAL={max(1, period)}"]
        if pattern == _PT_MONTH:
            parts.append(f"BYMONTHDAY={day_of_month}")
        elif pattern == _PT_MONTH_END:
            parts.append("BYMONTHDAY=-1")
        elif pattern == _PT_MONTH_NTH:
            days = _weekdays(mask)
            if not days:
                raise RecurrenceError("monthly recurrence without any weekday")
            parts += ["BYDAY=" + ",".join(days), f"BYSETPOS={-1 if nth == 5 else nth}"]
        else:
            raise RecurrenceError(f"pattern type {pattern:#x} with frequency {freq:#x}")
    else:
        raise RecurrenceError(f"recurrence frequency {freq:#x} with pattern {pattern:#x}")

    first_start = _minutes(start_date) + timedelta(minutes=start_offset)
    until_local: datetime | None = None
    if end_type == _END_COUNT:
        parts.append(f"COUNT={count}")
    elif end_type == _END_DATE:
        until_local = _minutes(end_date) + timedelta(minutes=start_offset)
    exdates = tuple(_minutes(d) + timedelta(minutes=start_offset) for d in sorted(set(deleted)))
    return Recurrence(
        first_start=first_start,
        duration=timedelta(minutes=max(0, end_offset - start_offset)),
        rrule=";".join(parts),
        exdates=exdates,
        until_local=until_local,
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    month: int
    weekday: int  # 0 = Sunday
    week: int  # 1..4, 5 = last
    hour: int
    minute: int


def _offset(minutes_east: int) -> str:
    sign = "+" if minutes_east >= 0 else "-"
    m = abs(minutes_east)
    return f"{sign}{m // 60:02d}{m % 60:02d}"


def _onset(rule: _Rule, year: int = 1601) -> datetime:
    """First transition of ``rule`` in ``year`` (RFC 5545: DTSTART is the first onset)."""
    days = monthrange(year, rule.month)[1]
    candidates = [
        d
        for d in range(1, days + 1)
        if (datetime(year, rule.month, d).weekday() + 1) % 7 == rule.weekday
    ]
    day = (
        candidates[-1]
        if rule.week >= 5 or rule.week > len(candidates)
        else candidates[rule.week - 1]
    )
    return datetime(year, rule.month, day, rule.hour, rule.minute)


def _rrule(rule: _Rule) -> str:
    week = -1 if rule.week >= 5 else rule.week
    return f"FREQ=YEARLY;BYMONTH={rule.month};BYDAY={week}{_DAYS[rule.weekday]}"


def utc_offset_minutes(tzstruct: bytes) -> int:
    """Standard-time offset east of UTC in minutes (UTC = local + bias)."""
    bias, standard_bias = struct.unpack_from("<ii", tzstruct, 0)
    return -(int(bias) + int(standard_bias))


def vtimezone(tzid: str, tzstruct: bytes) -> list[str]:
    """VTIMEZONE lines from a TZSTRUCT (MS-OXOCAL 2.2.1.39); raises on a short blob."""
    if len(tzstruct) < 48:
        raise RecurrenceError("time zone structure is truncated")
    bias, standard_bias, daylight_bias = struct.unpack_from("<iii", tzstruct, 0)
    std = struct.unpack_from("<8H", tzstruct, 14)
    dst = struct.unpack_from("<8H", tzstruct, 32)
    standard = -(bias + standard_bias)
    daylight = -(bias + daylight_bias)
    lines = ["BEGIN:VTIMEZONE", f"TZID:{tzid}"]
    if std[1] == 0 or dst[1] == 0:
        lines += [
            "BEGIN:STANDARD",
            "DTSTART:16010101T000000",
            f"TZOFFSETFROM:{_offset(standard)}",
            f"TZOFFSETTO:{_offset(standard)}",
            "END:STANDARD",
        ]
    else:
        # SYSTEMTIME: wYear, wMonth, wDayOfWeek, wDay (week 1..5), wHour, wMinute, ...
        for name, st, frm, to in (
            ("STANDARD", std, daylight, standard),
            ("DAYLIGHT", dst, standard, daylight),
        ):
            rule = _Rule(month=st[1], weekday=st[2], week=st[3], hour=st[4], minute=st[5])
            lines += [
                f"BEGIN:{name}",
                f"DTSTART:{_onset(rule):%Y%m%dT%H%M%S}",
                f"RRULE:{_rrule(rule)}",
                f"TZOFFSETFROM:{_offset(frm)}",
                f"TZOFFSETTO:{_offset(to)}",
                f"END:{name}",
            ]
    lines.append("END:VTIMEZONE")
    return lines
