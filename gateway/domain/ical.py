"""A small, fast, lossless iCalendar content-line codec (RFC 5545 section 3.1).

Why our own and not ``icalendar.Calendar.from_ical`` on the hot path: a full icalendar
parse costs ~1.1 ms plus ~66 us per ATTENDEE line (measured on this machine class),
and it normalises values we must keep byte-for-byte (X- properties, unknown
parameters, odd client formatting).  iTIP processing mostly needs the raw property
names, parameters and values; typed values (dates, durations) are decoded on demand
by :mod:`gateway.domain.timeutil`.  The icalendar library is still used where it adds
real value (VTIMEZONE to tzinfo conversion).

The codec is tolerant of what real clients send (LF-only line endings, blank lines
between components, folded ``mailto:`` URIs, lower-case names) and strict about what
would make the data ambiguous (unbalanced BEGIN/END, a line with no ``:``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "Component",
    "ICalError",
    "Property",
    "escape_text",
    "parse",
    "parse_one",
    "parse_property",
    "serialize",
    "unescape_text",
]

# Hard bounds so a hostile or broken calendar cannot make us spend unbounded CPU or
# memory (ARCHITECTURE.md section 6: "parsing ... is bounded").
MAX_LINES = 200_000
MAX_DEPTH = 8
FOLD_OCTETS = 75  # RFC 5545 section 3.1: lines SHOULD NOT be longer than 75 octets

_SAFE_PARAM = re.compile(r'^[^";:,]*$')
# A content line starts with a name (iana-token or x-name, RFC 5545 section 3.1)
# followed by ";" or ":".  Names in practice start with a letter.
_PROPERTY_START = re.compile(r"^[A-Za-z][A-Za-z0-9-]*[;:]")


class ICalError(ValueError):
    """The text is not a usable iCalendar stream; ``line`` is 1-based (0 = unknown)."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason = reason
        self.line = line


@dataclass(slots=True)
class Property:
    """One content line: ``NAME;PARAM=V1,V2:VALUE`` with the value kept raw (escaped)."""

    name: str
    value: str
    params: dict[str, list[str]] = field(default_factory=dict)

    def param(self, name: str, default: str | None = None) -> str | None:
        """First value of parameter ``name`` (case-insensitive), or ``default``."""
        values = self.params.get(name.upper())
        return values[0] if values else default

    def param_list(self, name: str) -> list[str]:
        """All values of a multi-valued parameter (e.g. DELEGATED-TO, MEMBER)."""
        return list(self.params.get(name.upper(), []))

    def set_param(self, name: str, value: str | Iterable[str] | None) -> None:
        """Set (or with ``None`` remove) a parameter."""
        key = name.upper()
        if value is None:
            self.params.pop(key, None)
        elif isinstance(value, str):
            self.params[key] = [value]
        else:
            values = list(value)
            if values:
                self.params[key] = values
            else:
                self.params.pop(key, None)

    def copy(self) -> Property:
        params = self.params
        return Property(
            self.name, self.value, {k: v[:] for k, v in params.items()} if params else {}
        )

    @property
    def text(self) -> str:
        """The value as TEXT, unescaped (RFC 5545 section 3.3.11)."""
        return unescape_text(self.value)

    def to_line(self) -> str:
        """The unfolded content line."""
        parts = [self.name]
        for key, values in self.params.items():
            parts.append(f"{key}={','.join(_quote_param(v) for v in values)}")
        return ";".join(parts) + ":" + self.value


@dataclass(slots=True)
class Component:
    """A BEGIN/END block: its properties in order and its sub-components."""

    name: str
    properties: list[Property] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)

    # --- property access -------------------------------------------------------
    def get(self, name: str) -> Property | None:
        key = name.upper()
        for prop in self.properties:
            if prop.name == key:
                return prop
        return None

    def get_all(self, name: str) -> list[Property]:
        key = name.upper()
        return [p for p in self.properties if p.name == key]

    def value(self, name: str, default: str | None = None) -> str | None:
        prop = self.get(name)
        return prop.value if prop is not None else default

    def text(self, name: str, default: str = "") -> str:
        """Unescaped TEXT value of the first ``name`` property."""
        prop = self.get(name)
        return prop.text if prop is not None else default

    def count(self, name: str) -> int:
        key = name.upper()
        return sum(1 for p in self.properties if p.name == key)

    def set(self, name: str, value: str, params: dict[str, list[str]] | None = None) -> Property:
        """Replace every ``name`` property by one with ``value``; keeps the first's position."""
        key = name.upper()
        new = Property(key, value, params or {})
        for i, prop in enumerate(self.properties):
            if prop.name == key:
                self.properties[i] = new
                self.properties = [
                    p for j, p in enumerate(self.properties) if j <= i or p.name != key
                ]
                return new
        self.properties.append(new)
        return new

    def add(self, prop: Property) -> None:
        self.properties.append(prop)

    def remove(self, name: str) -> int:
        key = name.upper()
        before = len(self.properties)
        self.properties = [p for p in self.properties if p.name != key]
        return before - len(self.properties)

    # --- sub-components ---------------------------------------------------------
    def sub(self, name: str) -> list[Component]:
        key = name.upper()
        return [c for c in self.components if c.name == key]

    def walk(self, name: str | None = None) -> Iterator[Component]:
        """Depth-first over self and all descendants (optionally only ``name``)."""
        if name is None or self.name == name.upper():
            yield self
        for child in self.components:
            yield from child.walk(name)

    def copy(self) -> Component:
        return Component(
            self.name,
            [p.copy() for p in self.properties],
            [c.copy() for c in self.components],
        )


def _quote_param(value: str) -> str:
    # RFC 5545 section 3.2: values containing ":", ";" or "," must be quoted; a DQUOTE
    # cannot be represented at all (RFC 6868 would allow ^'), so it is dropped.
    value = value.replace('"', "")
    if _SAFE_PARAM.match(value):
        return value
    return f'"{value}"'


def _unfold(text: str, warnings: list[str]) -> Iterator[tuple[int, str]]:
    """Yield (first line number, logical line), undoing RFC 5545 section 3.1 folding.

    A physical line that cannot start a property and follows one is a fold whose leading
    space was lost (seen from Exchange, which breaks long UIDs that way, and in
    calendars cut out of quoted-printable mail); it is joined to the previous line
    with a warning rather than rejecting the whole calendar.
    """
    current: str | None = None
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw[:1] in (" ", "\t"):
            if current is not None:
                current += raw[1:]
                continue
            line = raw.lstrip()
        elif (
            current is not None
            and raw
            and not _PROPERTY_START.match(raw)
            and current[:6].upper() not in ("BEGIN:", "END:")
        ):
            warnings.append(f"line {number}: joined a fold that lacked its leading space")
            current += raw
            continue
        else:
            line = raw
        if current is not None:
            yield start, current
        current, start = line, number
    if current is not None:
        yield start, current


# The common content line: a plain name, no parameters ("UID:...", "DTSTART:...").
_BARE_NAME = re.compile(r"([A-Za-z0-9-]+):")
_NAME_END = re.compile(r"[;:]")
_PARAM_VALUE_END = re.compile(r"[,;:]")


def _split_line(line: str, number: int, warnings: list[str]) -> Property:
    """Split an unfolded content line into name, parameters and raw value.

    The scanning is done by ``str.find`` and compiled patterns rather than a loop over
    characters: this runs once per content line of every calendar processed.
    """
    bare = _BARE_NAME.match(line)
    if bare is not None:
        return Property(bare.group(1).upper(), line[bare.end() :], {})
    n = len(line)
    # Name runs to the first ";" or ":".
    end = _NAME_END.search(line)
    i = n if end is None else end.start()
    name = line[:i].strip().upper()
    if not name or i == n:
        raise ICalError(f"content line has no ':' separator: {line[:60]!r}", number)
    params: dict[str, list[str]] = {}
    while i < n and line[i] == ";":
        i += 1
        eq = line.find("=", i)
        colon = line.find(":", i)
        if eq < 0 or (0 <= colon < eq and line.find('"', i, colon) < 0):
            # "ORGANIZER;mailto:x@y" (Zimbra): the ';' was meant to be ':'.
            if colon < 0:
                raise ICalError(f"parameter without '=' in {name}", number)
            warnings.append(f"line {number}: {name} has a parameter without '='; read as value")
            return Property(name, line[i:], params)
        pname = line[i:eq].strip().upper()
        i = eq + 1
        values: list[str] = []
        while True:
            if i < n and line[i] == '"':
                close = line.find('"', i + 1)
                if close < 0:
                    raise ICalError(f"unterminated quoted parameter {pname} in {name}", number)
                values.append(line[i + 1 : close])
                i = close + 1
            else:
                stop = _PARAM_VALUE_END.search(line, i)
                end_of_value = n if stop is None else stop.start()
                values.append(line[i:end_of_value])
                i = end_of_value
            if i < n and line[i] == ",":
                i += 1
                continue
            break
        # Duplicate parameters: keep the values of both (lenient; RFC forbids it).
        params.setdefault(pname, []).extend(values)
        if i >= n:
            raise ICalError(f"content line has no ':' separator: {line[:60]!r}", number)
        if line[i] not in ";:":
            raise ICalError(f"unexpected character {line[i]!r} after parameter {pname}", number)
    # line[i] == ":"
    return Property(name, line[i + 1 :], params)


def parse_property(line: str) -> Property:
    """Parse one unfolded content line (as stored by :meth:`Property.to_line`)."""
    return _split_line(line, 0, [])


def parse(text: str, warnings: list[str] | None = None) -> list[Component]:
    """Parse every top-level component (normally VCALENDARs) in ``text``.

    Raises :class:`ICalError` with a line number for structural problems that make
    the data ambiguous (unbalanced BEGIN/END).  Recoverable client mistakes are
    repaired and described in ``warnings`` when a list is given.
    """
    if warnings is None:
        warnings = []
    if text.startswith("\ufeff"):
        text = text[1:]
    roots: list[Component] = []
    stack: list[Component] = []
    count = 0
    for number, line in _unfold(text, warnings):
        count += 1
        if count > MAX_LINES:
            raise ICalError(f"more than {MAX_LINES} content lines", number)
        if not line.strip():
            continue  # blank lines between components (seen from iCloud) are harmless
        prop = _split_line(line, number, warnings)
        if prop.name == "BEGIN":
            if len(stack) >= MAX_DEPTH:
                raise ICalError("components nested too deeply", number)
            comp = Component(prop.value.strip().upper())
            if stack:
                stack[-1].components.append(comp)
            else:
                roots.append(comp)
            stack.append(comp)
        elif prop.name == "END":
            name = prop.value.strip().upper()
            if not stack:
                raise ICalError(f"END:{name} without BEGIN", number)
            if stack[-1].name != name:
                raise ICalError(f"END:{name} does not close BEGIN:{stack[-1].name}", number)
            stack.pop()
        else:
            if not stack:
                # Trailing junk after END:VCALENDAR (a cache comment from Podio).
                warnings.append(f"line {number}: ignored {prop.name} outside any component")
                continue
            stack[-1].properties.append(prop)
    if stack:
        raise ICalError(f"BEGIN:{stack[-1].name} is never closed")
    if not roots:
        raise ICalError("no iCalendar component found")
    return roots


def parse_one(text: str, warnings: list[str] | None = None) -> Component:
    """Parse text that must hold exactly one VCALENDAR."""
    roots = parse(text, warnings)
    cals = [c for c in roots if c.name == "VCALENDAR"]
    if len(cals) != 1:
        raise ICalError(f"expected one VCALENDAR, found {len(cals)}")
    return cals[0]


def _fold(line: str) -> str:
    """Fold a content line at 75 octets without splitting a UTF-8 sequence."""
    data = line.encode("utf-8")
    if len(data) <= FOLD_OCTETS:
        return line
    out: list[str] = []
    limit = FOLD_OCTETS
    pos = 0
    while pos < len(data):
        end = min(pos + limit, len(data))
        # Back off to a character boundary (continuation bytes are 0b10xxxxxx).
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        out.append(data[pos:end].decode("utf-8"))
        pos = end
        limit = FOLD_OCTETS - 1  # continuation lines start with a space
    return "\r\n ".join(out)


def _emit(comp: Component, out: list[str]) -> None:
    out.append(f"BEGIN:{comp.name}")
    out.extend(_fold(p.to_line()) for p in comp.properties)
    for child in comp.components:
        _emit(child, out)
    out.append(f"END:{comp.name}")


def serialize(*components: Component) -> str:
    """Serialise components with CRLF line endings and RFC 5545 folding."""
    out: list[str] = []
    for comp in components:
        _emit(comp, out)
    return "\r\n".join(out) + "\r\n"


def unescape_text(value: str) -> str:
    """Undo TEXT escaping (RFC 5545 section 3.3.11): ``\\n``, ``\\,``, ``\\;``, ``\\\\``."""
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "\\" and i + 1 < n:
            nxt = value[i + 1]
            out.append("\n" if nxt in "nN" else nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def escape_text(value: str) -> str:
    """Escape a string for a TEXT value (RFC 5545 section 3.3.11)."""
    return (
        value.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
    )
