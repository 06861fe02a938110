"""Date, date-time and duration values, and time-zone resolution.

RFC 5545 section 3.3.4/3.3.5 values come in three forms: DATE (all-day), DATE-TIME in
UTC (``Z``), and local DATE-TIME that is either floating or bound to a TZID.  RFC 5546
requires matching RECURRENCE-IDs "by instant", so every comparison goes through
:func:`instance_key`, which maps a value to one canonical string: UTC for anything
anchored in time, the local form for floating values and dates.

TZID resolution order, chosen for interoperability (ARCHITECTURE.md section 4):
1. an IANA name (``Europe/Berlin``; also Outlook-style ``/mozilla.org/.../Europe/Berlin``)
   via :mod:`zoneinfo` - fast and authoritative;
2. the calendar's own VTIMEZONE, converted by the icalendar library;
3. a Windows zone name (``W. Europe Standard Time``) via icalendar's CLDR table;
4. otherwise UTC, with a warning the caller records (Google once sent ``TZID=BRT``
   with no VTIMEZONE).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.domain.ical import Component, Property, parse_one, serialize

__all__ = [
    "TimeValue",
    "TzResolver",
    "instance_key",
    "parse_duration",
    "to_utc",
    "vtimezone_for",
]

_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DATETIME = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(Z?)$")
_DURATION = re.compile(
    r"^(?P<sign>[+-])?P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)

TimeValue = date | datetime  # a datetime is aware (UTC or zoned) or naive (floating)


@lru_cache(maxsize=512)
def _zoneinfo(name: str) -> tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _iana_candidate(tzid: str) -> tzinfo | None:
    tzid = tzid.strip().strip('"')
    zone = _zoneinfo(tzid)
    if zone is not None:
        return zone
    # Prefixed forms: "/mozilla.org/20070129_1/Europe/Berlin", "/softwarestudio.org/..."
    parts = [p for p in tzid.split("/") if p]
    for i in range(len(parts) - 1):
        zone = _zoneinfo("/".join(parts[i:]))
        if zone is not None:
            return zone
    return None


@lru_cache(maxsize=1)
def _windows_table() -> dict[str, str]:
    try:
        from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON
    except ImportError:  # pragma: no cover - depends on the library version
        return {}
    return {str(k).lower(): str(v) for k, v in WINDOWS_TO_OLSON.items()}


_MAX_REMEMBERED = 4096  # decoded values per resolver (a hostile calendar is bounded)


@dataclass
class TzResolver:
    """Resolves TZIDs against a calendar's VTIMEZONEs; collects warnings.

    One resolver per parsed calendar.  ``warnings`` accumulates human-readable notes
    (unknown TZID, fallback used) that end up in the journal outcome.
    """

    vtimezones: dict[str, Component] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    _cache: dict[str, tzinfo] = field(default_factory=dict)
    # Decoded values by (text, TZID, VALUE): one message decodes the same DTSTART and
    # RECURRENCE-ID texts dozens of times (issue 5).  Values are immutable and the
    # zone of a TZID is fixed by ``_cache`` at its first use, so a remembered value is
    # exactly what decoding again would give.  Per resolver, i.e. per message.
    _values: dict[tuple[str, str | None, str | None], TimeValue] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def for_calendar(cls, calendar: Component) -> TzResolver:
        zones = {}
        for vtz in calendar.sub("VTIMEZONE"):
            tzid = vtz.value("TZID")
            if tzid:
                zones[tzid.strip()] = vtz
        return cls(vtimezones=zones)

    def resolve(self, tzid: str) -> tzinfo:
        cached = self._cache.get(tzid)
        if cached is not None:
            return cached
        zone = _iana_candidate(tzid)
        if zone is None and tzid in self.vtimezones:
            zone = _from_vtimezone(self.vtimezones[tzid])
        if zone is None:
            olson = _windows_table().get(tzid.strip().lower())
            if olson:
                zone = _zoneinfo(olson)
        if zone is None:
            self.warnings.append(f"unknown TZID {tzid!r} without usable VTIMEZONE; read as UTC")
            zone = UTC
        self._cache[tzid] = zone
        return zone

    def value(self, prop: Property) -> TimeValue:
        """Decode a DATE or DATE-TIME property (DTSTART, RECURRENCE-ID, ...)."""
        return self.parse(prop.value, prop.param("TZID"), prop.param("VALUE"))

    def parse(self, text: str, tzid: str | None = None, value_type: str | None = None) -> TimeValue:
        memo_key = (text, tzid, value_type)
        known = self._values.get(memo_key)
        if known is not None:
            return known
        value = self._decode(text, tzid, value_type)
        if len(self._values) < _MAX_REMEMBERED:
            self._values[memo_key] = value
        return value

    def _decode(self, text: str, tzid: str | None, value_type: str | None) -> TimeValue:
        raw = text.strip()
        m = _DATETIME.match(raw)
        if m and (value_type or "DATE-TIME").upper() != "DATE":
            y, mo, d, hh, mi, ss, z = m.groups()
            second = min(int(ss), 59)  # leap second "60" appears in the wild
            naive = datetime(int(y), int(mo), int(d), int(hh), int(mi), second)
            if z:
                return naive.replace(tzinfo=UTC)
            if tzid:
                return naive.replace(tzinfo=self.resolve(tzid))
            return naive  # floating
        m = _DATE.match(raw) or _DATE.match(raw[:8])
        if m:
            y, mo, d = m.groups()
            return date(int(y), int(mo), int(d))
        raise ValueError(f"not a DATE or DATE-TIME value: {text[:40]!r}")

    def values(self, prop: Property) -> list[TimeValue]:
        """Decode a multi-valued property (EXDATE, RDATE); PERIOD values give their start."""
        out: list[TimeValue] = []
        tzid = prop.param("TZID")
        vtype = prop.param("VALUE")
        for raw in prop.value.split(","):
            item = raw.strip()
            if not item:
                continue
            if "/" in item:  # RDATE;VALUE=PERIOD: the instance starts at the period start
                item = item.split("/", 1)[0]
                vtype = None
            out.append(self.parse(item, tzid, vtype))
        return out


def _from_vtimezone(vtz: Component) -> tzinfo | None:
    """Convert a VTIMEZONE block to tzinfo through the icalendar library."""
    try:
        import icalendar

        wrapped = Component("VCALENDAR", [], [vtz])
        cal = icalendar.Calendar.from_ical(serialize(wrapped))
        for comp in cal.walk("VTIMEZONE"):
            tz = comp.to_tz()  # type: ignore[attr-defined]  # icalendar.Timezone
            return tz if isinstance(tz, tzinfo) else None
    except Exception:  # any library failure means "cannot use it"
        return None
    return None


def to_utc(value: TimeValue, floating_tz: tzinfo = UTC) -> datetime:
    """The instant of a value: dates are midnight, floating values use ``floating_tz``."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=floating_tz).astimezone(UTC)
        return value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, tzinfo=floating_tz).astimezone(UTC)


def instance_key(value: TimeValue) -> str:
    """Canonical key of a RECURRENCE-ID/instance start (RFC 5546 section 2.1.5: by instant).

    ``YYYYMMDDTHHMMSSZ`` for anchored date-times (converted to UTC), ``YYYYMMDDTHHMMSS``
    for floating date-times, ``YYYYMMDD`` for dates.  The empty string is reserved for
    the master component (the series).
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.strftime("%Y%m%dT%H%M%S")
        return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return value.strftime("%Y%m%d")


def parse_duration(text: str) -> timedelta:
    """Decode a DURATION value (RFC 5545 section 3.3.6)."""
    m = _DURATION.match(text.strip().upper())
    if not m or text.strip().upper() in ("P", "PT", "-P", "+P"):
        raise ValueError(f"not a DURATION value: {text[:40]!r}")
    parts = {k: int(v) for k, v in m.groupdict().items() if v and k != "sign"}
    delta = timedelta(
        weeks=parts.get("weeks", 0),
        days=parts.get("days", 0),
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
    )
    return -delta if m.group("sign") == "-" else delta


def format_utc(value: datetime) -> str:
    """Format an aware datetime as a UTC DATE-TIME value (``...Z``)."""
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


@lru_cache(maxsize=256)
def _vtimezone_text(tzid: str) -> str | None:
    try:
        import icalendar

        vtz = icalendar.Timezone.from_tzid(tzid)
        return str(vtz.to_ical().decode("utf-8"))
    except Exception:  # unknown zone: the caller keeps the original block
        return None


def vtimezone_for(tzid: str) -> Component | None:
    """A VTIMEZONE for an IANA TZID, for outgoing messages (RFC 5546 section 3.1 / RFC 6047).

    Returns ``None`` when the zone is unknown; callers then keep the VTIMEZONE that
    came with the original message.
    """
    text = _vtimezone_text(tzid)
    if text is None:
        return None
    try:
        wrapped = parse_one("BEGIN:VCALENDAR\r\n" + text + "END:VCALENDAR\r\n")
    except ValueError:
        return None
    zones = wrapped.sub("VTIMEZONE")
    return zones[0].copy() if zones else None
