"""Deriving one instance of a recurring component from its master.

RFC 5546 section 3.7.1: an instance is identified by its RECURRENCE-ID, "equal to the
date/time of the instance".  When a REPLY (or an accepted COUNTER) concerns an
instance that has no override yet, the organiser's copy gets an override derived from
the master: the master's properties without RRULE/RDATE/EXDATE, RECURRENCE-ID and
DTSTART set to the instance, DTEND/DUE moved by the master's duration.  Values are
written in the master's own form (same TZID, UTC or floating, DATE or DATE-TIME) so
the rendered override looks like what the organiser's client would produce.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from gateway.domain.ical import Property
from gateway.domain.model import StoredInstance
from gateway.domain.timeutil import TimeValue, TzResolver, format_utc, to_utc

__all__ = ["derive_instance", "format_like", "key_to_value"]

_RECURRENCE_PROPS = frozenset({"RRULE", "RDATE", "EXDATE", "EXRULE", "RECURRENCE-ID"})


def key_to_value(key: str) -> TimeValue:
    """Invert :func:`gateway.domain.timeutil.instance_key` (UTC, floating or DATE)."""
    if len(key) == 8:
        return date(int(key[:4]), int(key[4:6]), int(key[6:8]))
    naive = datetime.strptime(key[:15], "%Y%m%dT%H%M%S")
    return naive.replace(tzinfo=UTC) if key.endswith("Z") else naive


def format_like(
    name: str, value: TimeValue, template: Property | None, resolver: TzResolver
) -> Property:
    """A ``name`` property holding ``value`` in the same form as ``template``."""
    tzid = template.param("TZID") if template is not None else None
    is_date = template is not None and (
        (template.param("VALUE") or "").upper() == "DATE" or len(template.value.strip()) == 8
    )
    if is_date or (template is None and not isinstance(value, datetime)):
        day = value.date() if isinstance(value, datetime) else value
        return Property(name, day.strftime("%Y%m%d"), {"VALUE": ["DATE"]})
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return Property(name, value.strftime("%Y%m%dT%H%M%S"))  # floating stays floating
    if tzid:
        local = value.astimezone(resolver.resolve(tzid))
        return Property(name, local.strftime("%Y%m%dT%H%M%S"), {"TZID": [tzid]})
    return Property(name, format_utc(value))


def _shift(value: TimeValue, start_old: TimeValue, start_new: TimeValue) -> TimeValue:
    """Move ``value`` by the distance between two starts (instant arithmetic)."""
    if not isinstance(value, datetime) and not isinstance(start_old, datetime):
        new_day = start_new.date() if isinstance(start_new, datetime) else start_new
        return new_day + (value - start_old)
    delta: timedelta = to_utc(value) - to_utc(start_old)
    if isinstance(start_new, datetime) and start_new.tzinfo is None:
        return start_new + delta
    return to_utc(start_new) + delta


def derive_instance(
    master: StoredInstance,
    key: str,
    resolver: TzResolver,
    *,
    this_and_future: bool = False,
) -> StoredInstance:
    """The override for instance ``key`` derived from ``master`` (RFC 5546 3.7.1)."""
    comp = master.component.copy()
    start_prop = comp.get("DTSTART")
    instant = key_to_value(key)
    rid = format_like("RECURRENCE-ID", instant, start_prop, resolver)
    if this_and_future:
        rid.set_param("RANGE", "THISANDFUTURE")
    new_start = format_like("DTSTART", instant, start_prop, resolver)
    start: datetime | None = None
    end: datetime | None = None
    try:
        old_start = resolver.value(start_prop) if start_prop is not None else None
        start_value = resolver.value(new_start)
        start = to_utc(start_value)
        end = start + (master.end - master.start) if master.start and master.end else start
        for end_name in ("DTEND", "DUE"):
            end_prop = comp.get(end_name)
            if end_prop is not None and old_start is not None:
                moved = _shift(resolver.value(end_prop), old_start, start_value)
                comp.set(end_name, "")
                new_end = format_like(end_name, moved, end_prop, resolver)
                comp.set(end_name, new_end.value, new_end.params)
    except ValueError:
        pass  # unreadable dates: keep the master's text, the instance is still addressable
    props = [p for p in comp.properties if p.name not in _RECURRENCE_PROPS]
    comp.properties = props
    if start_prop is not None:
        comp.set("DTSTART", new_start.value, new_start.params)
    # RECURRENCE-ID goes right after UID, where clients put it.
    uid_at = next((i + 1 for i, p in enumerate(comp.properties) if p.name == "UID"), 0)
    comp.properties.insert(uid_at, rid)
    return replace(
        master,
        key=key,
        component=comp,
        this_and_future=this_and_future,
        start=start if start is not None else master.start,
        end=end if end is not None else master.end,
    )
