"""Bounded recurrence expansion for conflicts and free/busy (RFC 5545 3.8.5, RFC 5546 3.7.1).

The engine expands a recurring component only to answer two questions: "does this
invitation conflict with the owner's busy time?" (accept-if-free, booking rules) and
"which periods is the owner busy for this object?" (the ``ReplaceBusy`` change).  Both
are answered within a window and a count limit, so an unbounded RRULE (no COUNT, no
UNTIL) or one whose DTSTART lies decades back always terminates.

Expansion uses :mod:`dateutil.rrule` on wall-clock values carrying their zone, so
instances keep their local time across DST changes (RFC 5545 section 3.3.10).
Floating times are read as UTC: the domain does not know the owner's zone.
EXDATE and RDATE are matched by instant (RFC 5546 section 2.1.5), and an override
(a stored instance with RECURRENCE-ID) replaces the instance it names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dateutil.rrule import rruleset, rrulestr

from gateway.domain.ical import Component
from gateway.domain.model import BusyPeriod, StoredInstance
from gateway.domain.timeutil import TimeValue, TzResolver, instance_key, parse_duration, to_utc

__all__ = [
    "BUSY_HORIZON",
    "Occurrence",
    "busy_periods",
    "duration_of",
    "expand",
    "is_recurring",
    "key_instant",
    "occurrences",
    "overlapping",
]

# "Any time" for questions about one instance (not datetime.min: arithmetic overflows).
_ALL_TIME = (datetime(1800, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))
# Default free/busy horizon relative to "now": [now - 1 day, now + 400 days].
BUSY_HORIZON = (timedelta(days=1), timedelta(days=400))
# How many candidate instances the scan may look at before giving up, whatever the
# window: protects against a DTSTART in 1970 with FREQ=HOURLY.
SCAN_CAP = 100_000
_UNTIL = re.compile(r"UNTIL=([0-9TZ]+)", re.IGNORECASE)
_FREQ = re.compile(r"FREQ=([A-Z]+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One instance: its RECURRENCE-ID key (:func:`instance_key`) and UTC span."""

    key: str
    start: datetime
    end: datetime


def is_recurring(comp: Component) -> bool:
    """True when the component defines more than one instance (RRULE or RDATE)."""
    return comp.get("RRULE") is not None or comp.get("RDATE") is not None


def _as_datetime(value: TimeValue) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day)


def _like(value: TimeValue, start: datetime) -> datetime:
    """Convert an EXDATE/RDATE value to the kind of ``start`` (aware or naive)."""
    dt = _as_datetime(value)
    if start.tzinfo is None:
        if dt.tzinfo is not None:
            return dt.astimezone(UTC).replace(tzinfo=None)
        return dt
    if dt.tzinfo is None:
        return dt.replace(tzinfo=start.tzinfo)
    return dt.astimezone(start.tzinfo)


def duration_of(comp: Component, resolver: TzResolver) -> timedelta | None:
    """Length of each instance (DTEND/DUE minus DTSTART, or DURATION; RFC 5545 3.6.1)."""
    prop = comp.get("DTSTART")
    if prop is None:
        return None
    try:
        return _duration(comp, resolver, resolver.value(prop))
    except ValueError:
        return None


def _duration(comp: Component, resolver: TzResolver, start: TimeValue) -> timedelta:
    end_prop = comp.get("DTEND") or comp.get("DUE")
    try:
        if end_prop is not None:
            length = to_utc(resolver.value(end_prop)) - to_utc(start)
            return max(length, timedelta(0))
        if comp.get("DURATION") is not None:
            return max(parse_duration(comp.value("DURATION") or ""), timedelta(0))
    except ValueError:
        pass
    return timedelta(days=1) if not isinstance(start, datetime) else timedelta(0)


_STEP = {"HOURLY": timedelta(hours=1), "DAILY": timedelta(days=1), "WEEKLY": timedelta(weeks=1)}
_INTERVAL = re.compile(r"INTERVAL=(\d+)", re.IGNORECASE)


def _fast_forward(rule: str, kind: str, start: datetime, target: datetime) -> datetime:
    """Move DTSTART forward by whole periods so the scan starts near the window.

    Only for HOURLY/DAILY/WEEKLY rules without COUNT (COUNT is counted from the real
    DTSTART): stepping by whole INTERVAL periods keeps every BYxxx default (weekday,
    time of day) and therefore yields the same instances after the new start.
    Without this, a daily rule from 1970 would scan 20,000 instances first.
    """
    step = _STEP.get(kind)
    if step is None or "COUNT=" in rule.upper():
        return start
    interval = _INTERVAL.search(rule)
    step *= max(int(interval.group(1)), 1) if interval else 1
    begin = to_utc(start)
    if target - begin <= step * 2:
        return start
    periods = (target - begin) // step - 1
    return start + step * periods  # wall-clock arithmetic: local time is kept


_RANGES = {
    "BYSECOND": (0, 60),
    "BYMINUTE": (0, 59),
    "BYHOUR": (0, 23),
    "BYMONTHDAY": (-31, 31),
    "BYYEARDAY": (-366, 366),
    "BYWEEKNO": (-53, 53),
    "BYMONTH": (1, 12),
    "BYSETPOS": (-366, 366),
}
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _check_parts(rule: str) -> None:
    """Refuse BYxxx values no date can satisfy (RFC 5545 3.3.10 ranges).

    dateutil accepts ``BYMONTH=13`` or ``BYMONTH=2;BYMONTHDAY=30`` and then searches
    day by day until the year 9999 for an instance that never comes.
    """
    fields: dict[str, list[int]] = {}
    for part in rule.upper().split(";"):
        name, _, value = part.partition("=")
        if name in _RANGES:
            try:
                numbers = [int(v) for v in value.split(",") if v]
            except ValueError:
                raise ValueError(f"{name}={value} is not a list of numbers") from None
            low, high = _RANGES[name]
            if any(n < low or n > high or (n == 0 and low < 0) for n in numbers):
                raise ValueError(f"{name}={value} is out of range")
            fields[name] = numbers
    months, days = fields.get("BYMONTH"), fields.get("BYMONTHDAY")
    if months and days:
        possible = any(abs(d) <= _MONTH_DAYS[m - 1] for m in months for d in days)
        if not possible:
            raise ValueError("BYMONTH and BYMONTHDAY never meet")


def _rule_text(rule: str, start: datetime) -> str:
    """Make UNTIL agree with DTSTART's kind, as dateutil insists (RFC 5545 3.3.10:
    UNTIL is UTC when DTSTART is zoned, local when DTSTART is floating or a date)."""

    def fix(match: re.Match[str]) -> str:
        raw = match.group(1).upper()
        if start.tzinfo is None:
            if raw.endswith("Z"):
                return "UNTIL=" + raw[:-1]
            return "UNTIL=" + raw
        if raw.endswith("Z"):
            return "UNTIL=" + raw
        local = datetime.strptime(raw[:15], "%Y%m%dT%H%M%S") if "T" in raw else None
        if local is None:  # a DATE: the whole day counts
            local = datetime.strptime(raw[:8], "%Y%m%d") + timedelta(days=1, seconds=-1)
        utc = local.replace(tzinfo=start.tzinfo).astimezone(UTC)
        return "UNTIL=" + utc.strftime("%Y%m%dT%H%M%SZ")

    return _UNTIL.sub(fix, rule.strip())


def occurrences(
    comp: Component,
    resolver: TzResolver,
    window_start: datetime,
    window_end: datetime,
    limit: int,
    *,
    warnings: list[str] | None = None,
) -> list[Occurrence]:
    """Instances of ``comp`` overlapping [window_start, window_end), at most ``limit``.

    A component without RRULE/RDATE is its own single instance.  Invalid rules give
    the DTSTART instance only, with a warning.
    """
    notes = warnings if warnings is not None else []
    start_prop = comp.get("DTSTART")
    if start_prop is None:
        return []
    try:
        start_value = resolver.value(start_prop)
    except ValueError:
        return []
    length = _duration(comp, resolver, start_value)
    start = _as_datetime(start_value)
    is_date = not isinstance(start_value, datetime)

    def make(dt: datetime) -> Occurrence:
        value: TimeValue = dt.date() if is_date else dt
        begin = to_utc(value)
        return Occurrence(instance_key(value), begin, begin + length)

    def overlaps(occ: Occurrence) -> bool:
        if occ.end == occ.start:
            return window_start <= occ.start < window_end
        return occ.end > window_start and occ.start < window_end

    if not is_recurring(comp):
        single = make(start)
        return [single] if overlaps(single) and limit > 0 else []

    rset = rruleset()
    rset.rdate(start)
    for prop in comp.get_all("RRULE"):
        freq = _FREQ.search(prop.value)
        kind = freq.group(1).upper() if freq else ""
        if kind in ("SECONDLY", "MINUTELY"):
            notes.append(f"RRULE FREQ={kind} not expanded; first instance only")
            continue
        try:
            rule_start = _fast_forward(prop.value, kind, start, window_start - length)
        except OverflowError:
            rule_start = start
        try:
            _check_parts(prop.value)
            rule = rrulestr(_rule_text(prop.value, start), dtstart=rule_start, cache=False)
            rset.rrule(rule)  # type: ignore[arg-type]
        except (ValueError, TypeError, OverflowError) as exc:
            notes.append(f"RRULE {prop.value[:60]!r} not usable ({exc}); first instance only")
    for prop in comp.get_all("RDATE"):
        try:
            for value in resolver.values(prop):
                rset.rdate(_like(value, start))
        except ValueError:
            notes.append(f"RDATE {prop.value[:40]!r} is invalid; ignored")
    for prop in comp.get_all("EXDATE"):
        try:
            for value in resolver.values(prop):
                rset.exdate(_like(value, start))
        except ValueError:
            notes.append(f"EXDATE {prop.value[:40]!r} is invalid; ignored")

    out: list[Occurrence] = []
    scanned = 0
    try:
        for dt in rset:
            scanned += 1
            occ = make(dt)
            if occ.start >= window_end or scanned > SCAN_CAP:
                break
            if overlaps(occ):
                out.append(occ)
                if len(out) >= limit:
                    break
    except (ValueError, TypeError, OverflowError) as exc:
        notes.append(f"recurrence expansion stopped: {exc}")
    return out


def expand(
    comp: Component,
    resolver: TzResolver,
    window_start: datetime,
    window_end: datetime,
    limit: int,
) -> list[tuple[datetime, datetime]]:
    """UTC (start, end) of the instances of ``comp`` in the window (see :func:`occurrences`)."""
    return [(o.start, o.end) for o in occurrences(comp, resolver, window_start, window_end, limit)]


def _instance_span(inst: StoredInstance, resolver: TzResolver) -> tuple[datetime, datetime] | None:
    if inst.start is not None:
        return inst.start, inst.end or inst.start
    found = occurrences(inst.component, resolver, *_ALL_TIME, 1)
    return (found[0].start, found[0].end) if found else None


def busy_periods(
    instances: Mapping[str, StoredInstance],
    resolver: TzResolver,
    window_start: datetime,
    window_end: datetime,
    limit: int,
    *,
    uid: str = "",
    fbtype_for: Mapping[str, str] | None = None,
    object_cancelled: bool = False,
) -> tuple[BusyPeriod, ...]:
    """The busy periods one stored object contributes (for ``ReplaceBusy``).

    Overrides replace the instance they name; cancelled and TRANSPARENT instances
    are free (RFC 5545 3.8.2.7).  ``fbtype_for`` maps an instance key ("" = series)
    to the FBTYPE to record for it ("" = not busy, e.g. the owner declined it).
    """
    if object_cancelled:
        return ()
    types = fbtype_for or {}
    periods: list[BusyPeriod] = []

    def fbtype(key: str, inst: StoredInstance) -> str:
        kind = types.get(key, types.get("", "BUSY"))
        if inst.cancelled or inst.status == "CANCELLED" or inst.transp == "TRANSPARENT":
            return ""
        return kind

    master = instances.get("")
    overrides = {k: v for k, v in instances.items() if k}
    ranges = _ranges(overrides, resolver)
    if master is not None and fbtype("", master):
        for occ in occurrences(master.component, resolver, window_start, window_end, limit):
            if occ.key in overrides:
                continue
            start, end, kind = occ.start, occ.end, fbtype("", master)
            instant = key_instant(occ.key)
            rng = next((r for r in ranges if instant and instant >= r[0]), None)
            if rng is not None:
                # RANGE=THISANDFUTURE (RFC 5545 3.8.4.4): later instances take the
                # range override's shift and length, or its cancellation.
                _, shift, length, range_kind = rng
                start = start + shift
                end = start + length if length is not None else end + shift
                kind = range_kind if range_kind else ""
            if kind:
                periods.append(BusyPeriod(start, end, kind, uid))
    for key, inst in sorted(overrides.items()):
        kind = fbtype(key, inst)
        span = _instance_span(inst, resolver)
        if not kind or span is None:
            continue
        start, end = span
        if end > window_start and start < window_end:
            periods.append(BusyPeriod(start, end, kind, uid))
    periods.sort(key=lambda p: (p.start, p.end))
    return tuple(periods[:limit])


def _ranges(
    overrides: Mapping[str, StoredInstance], resolver: TzResolver
) -> list[tuple[datetime, timedelta, timedelta | None, str]]:
    """THISANDFUTURE overrides as (from instant, shift, length, fbtype), latest first."""
    out: list[tuple[datetime, timedelta, timedelta | None, str]] = []
    for key, inst in overrides.items():
        instant = key_instant(key)
        if not inst.this_and_future or instant is None:
            continue
        span = _instance_span(inst, resolver)
        cancelled = inst.cancelled or inst.status == "CANCELLED"
        if cancelled or span is None:
            out.append((instant, timedelta(0), None, ""))
            continue
        kind = "" if inst.transp == "TRANSPARENT" else "BUSY"
        out.append((instant, span[0] - instant, span[1] - span[0], kind))
    out.sort(key=lambda r: r[0], reverse=True)
    return out


# key_instant() results: strptime is slow and the same keys recur within and across
# messages (issue 5).  Strings in, immutable datetimes out: nothing can leak; bounded
# by emptying when full.
_KEY_INSTANTS: dict[str, datetime | None] = {}
_KEY_INSTANTS_MAX = 4096


def key_instant(key: str) -> datetime | None:
    """The UTC instant of an instance key (floating and date keys read as UTC)."""
    if not key:
        return None
    try:
        return _KEY_INSTANTS[key]
    except KeyError:
        pass
    found: datetime | None = None
    for fmt in ("%Y%m%dT%H%M%SZ", "%Y%m%dT%H%M%S", "%Y%m%d"):
        try:
            found = datetime.strptime(key, fmt).replace(tzinfo=UTC)
            break
        except ValueError:
            continue
    if len(key) <= 64:
        if len(_KEY_INSTANTS) >= _KEY_INSTANTS_MAX:
            _KEY_INSTANTS.clear()
        _KEY_INSTANTS[key] = found
    return found


def overlapping(
    spans: Iterable[tuple[datetime, datetime]],
    busy: Iterable[BusyPeriod],
    *,
    ignore_uid: str = "",
) -> list[tuple[datetime, datetime]]:
    """The spans that overlap a busy period (FBTYPE other than FREE) of another object."""
    blocks = sorted(
        (b.start, b.end)
        for b in busy
        if b.fbtype.upper() != "FREE" and (not ignore_uid or b.uid != ignore_uid)
    )
    out: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        end_eff = end if end > start else start + timedelta(seconds=1)
        if any(b_start < end_eff and b_end > start for b_start, b_end in blocks):
            out.append((start, end))
    return out
