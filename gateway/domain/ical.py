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

# A content line starts with a name (iana-token or x-name, RFC 5545 section 3.1)
# followed by ";" or ":".  Names in practice start with a letter.
_PROPERTY_START = re.compile(r"^[A-Za-z][A-Za-z0-9-]*[;:]")


class ICalError(ValueError):
    """The text is not a usable iCalendar stream; ``line`` is 1-based (0 = unknown)."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {reason}" if line else reason)
        self.reason = reason
        self.line = line


# Sharing states of a Property's parameter dict (see Property).
_PRIVATE = 0  # only this Property refers to the dict; changed only through its methods
_SHARED = 1  # copies share the dict: nobody may change it, a writer copies it first
_EXPOSED = 2  # a caller holds the dict (``params`` was read or supplied): no sharing


class Property:
    """One content line: ``NAME;PARAM=V1,V2:VALUE`` with the value kept raw (escaped).

    Issue 5 (CPU per message): a parsed property is copied and serialised several
    times per message (into the stored instance, the attendee rows, the REPLY) and
    almost never changed.  So :meth:`copy` shares the parameter dict copy-on-write
    instead of copying it, and the serialised line is remembered (from parsing when
    the received line already had the exact form :meth:`to_line` produces, else from
    the first :meth:`to_line`).  Both are invisible to callers:

    * the dict is shared only while no caller can reach it: reading or assigning
      ``params`` (callers mutate it in place) first gives this property a dict of its
      own and turns both optimisations off for it;
    * :meth:`set_param` on a shared dict copies it first and forgets the line;
    * the remembered line is tied to the very ``name`` and ``value`` strings it was
      made from, so assigning either attribute makes it miss.
    """

    __slots__ = ("_line", "_params", "_state", "name", "value")

    def __init__(self, name: str, value: str, params: dict[str, list[str]] | None = None) -> None:
        self.name = name
        self.value = value
        if params is None:
            self._params: dict[str, list[str]] = {}
            self._state = _PRIVATE
        else:
            # The caller still holds this dict and may change it at any time.
            self._params = params
            self._state = _EXPOSED
        self._line: tuple[str, str, str] | None = None

    @classmethod
    def _parsed(
        cls, name: str, value: str, params: dict[str, list[str]], line: str | None
    ) -> Property:
        """A property owning ``params`` (nobody else holds it); ``line`` is exactly what
        :meth:`to_line` would build, or None when that is not known."""
        prop = cls.__new__(cls)
        prop.name = name
        prop.value = value
        prop._params = params
        prop._state = _PRIVATE
        prop._line = (name, value, line) if line is not None else None
        return prop

    @property
    def params(self) -> dict[str, list[str]]:
        """The parameters (upper-case names), for callers that change them in place."""
        if self._state != _EXPOSED:
            if self._state == _SHARED:
                self._params = {k: v[:] for k, v in self._params.items()}
            self._state = _EXPOSED
            self._line = None
        return self._params

    @params.setter
    def params(self, value: dict[str, list[str]]) -> None:
        self._params = value
        self._state = _EXPOSED
        self._line = None

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Property)
        return (self.name, self.value, self._params) == (other.name, other.value, other._params)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        return f"Property(name={self.name!r}, value={self.value!r}, params={self._params!r})"

    def param(self, name: str, default: str | None = None) -> str | None:
        """First value of parameter ``name`` (case-insensitive), or ``default``."""
        values = self._params.get(name.upper())
        return values[0] if values else default

    def param_list(self, name: str) -> list[str]:
        """All values of a multi-valued parameter (e.g. DELEGATED-TO, MEMBER)."""
        return list(self._params.get(name.upper(), []))

    def has_param(self, name: str) -> bool:
        """Whether parameter ``name`` (case-insensitive) is present."""
        return name.upper() in self._params

    def params_copy(self) -> dict[str, list[str]]:
        """A deep copy of the parameters, owned by the caller."""
        return {k: v[:] for k, v in self._params.items()}

    def set_param(self, name: str, value: str | Iterable[str] | None) -> None:
        """Set (or with ``None`` remove) a parameter."""
        key = name.upper()
        if self._state == _SHARED:
            if value is None and key not in self._params:
                return  # nothing to remove: keep sharing
            self._params = {k: v[:] for k, v in self._params.items()}
            self._state = _PRIVATE
        self._line = None
        params = self._params
        if value is None:
            params.pop(key, None)
        elif isinstance(value, str):
            params[key] = [value]
        else:
            values = list(value)
            if values:
                params[key] = values
            else:
                params.pop(key, None)

    def copy(self) -> Property:
        """An independent copy (shares the parameters copy-on-write, see the class doc)."""
        new = Property.__new__(Property)
        new.name = self.name
        new.value = self.value
        if self._state == _EXPOSED:
            params = self._params
            new._params = {k: v[:] for k, v in params.items()} if params else {}
            new._state = _PRIVATE
            new._line = None
        else:
            new._params = self._params
            self._state = new._state = _SHARED
            new._line = self._line
        return new

    @property
    def text(self) -> str:
        """The value as TEXT, unescaped (RFC 5545 section 3.3.11)."""
        return unescape_text(self.value)

    def to_line(self) -> str:
        """The unfolded content line."""
        name, value, params = self.name, self.value, self._params
        if not params:
            return name + ":" + value  # cheaper than remembering it
        cached = self._line
        if cached is not None and cached[0] is name and cached[1] is value:
            return cached[2]
        line = _build_line(name, value, params)
        if self._state != _EXPOSED:
            self._line = (name, value, line)
        return line


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


def _build_line(name: str, value: str, params: dict[str, list[str]]) -> str:
    parts = [name]
    for key, values in params.items():
        parts.append(f"{key}={','.join(_quote_param(v) for v in values)}")
    return ";".join(parts) + ":" + value


def _quote_param(value: str) -> str:
    # RFC 5545 section 3.2: values containing ":", ";" or "," must be quoted; a DQUOTE
    # cannot be represented at all (RFC 6868 would allow ^'), so it is dropped.
    if '"' in value:
        value = value.replace('"', "")
    if ";" in value or ":" in value or "," in value:
        return f'"{value}"'
    return value


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


# The common parameterised line: token names, values plain or DQUOTEd
# ('ATTENDEE;ROLE=REQ-PARTICIPANT;CN="Doe, Ann";RSVP=TRUE:mailto:a@x').  A line of
# this shape needs none of the general loop's error checks; anything else (spaces or
# odd characters in names, stray quotes, the Zimbra ';' for ':') takes the loop.
_PARAM_VALUE = r'(?:"[^"]*"|[^";:,]*)'
_ONE_PARAM = rf"[A-Za-z0-9-]+={_PARAM_VALUE}(?:,{_PARAM_VALUE})*"
_SIMPLE_PARAMS = re.compile(rf"([A-Za-z0-9-]+)((?:;{_ONE_PARAM})+):")
_EACH_PARAM = re.compile(rf";([A-Za-z0-9-]+)=({_PARAM_VALUE}(?:,{_PARAM_VALUE})*)")
_NEEDS_QUOTES = re.compile(r"[;:,]")


def _split_simple(line: str, match: re.Match[str]) -> Property:
    """:func:`_split_line` for a line matching ``_SIMPLE_PARAMS`` (same results).

    Also decides whether the line is exactly what :meth:`Property.to_line` would
    build from the result (upper-case names, no duplicate parameter, a value quoted
    if and only if it holds ``;``, ``:`` or ``,``, RFC 5545 section 3.2); if so the
    property remembers it and serialising it later costs nothing.
    """
    raw_name = match.group(1)
    name = raw_name.upper()
    canonical = name == raw_name
    params: dict[str, list[str]] = {}
    section = match.group(2)
    quoted = section.split('"')[1::2] if '"' in section else []
    pairs: list[tuple[str, list[str]]] = []
    if not any(";" in q or "," in q for q in quoted):
        # Quoted values (if any) hold no ";" or ",": plain splitting finds the same
        # parameters and values; the quotes are then taken off.
        for chunk in section[1:].split(";"):
            raw_pname, _, raw_values = chunk.partition("=")
            values = raw_values.split(",")
            if quoted and '"' in raw_values:
                values = [v[1:-1] if v[:1] == '"' else v for v in values]
            pairs.append((raw_pname, values))
        # A quoted value is written back quoted only if it needs it (here: a ":").
        canonical = canonical and all(":" in q for q in quoted)
    else:
        for m in _EACH_PARAM.finditer(section):
            raw_values = m.group(2)
            found: list[str] = []
            pos, n = 0, len(raw_values)
            while True:
                if raw_values.startswith('"', pos):
                    close = raw_values.index('"', pos + 1)
                    value = raw_values[pos + 1 : close]
                    canonical = canonical and _NEEDS_QUOTES.search(value) is not None
                    pos = close + 1
                else:
                    comma = raw_values.find(",", pos)
                    end = n if comma < 0 else comma
                    value = raw_values[pos:end]
                    pos = end
                found.append(value)
                if pos >= n:
                    break
                pos += 1  # the "," before the next value
            pairs.append((m.group(1), found))
    for raw_pname, values in pairs:
        pname = raw_pname.upper()
        existing = params.get(pname)
        if existing is None:
            params[pname] = values
            canonical = canonical and pname == raw_pname
        else:
            existing.extend(values)  # a duplicate parameter: both kept, as the loop does
            canonical = False
    value = line[match.end() :]
    # Not canonical (typically CN="Ann", quoted without need): serialise it now, once,
    # so that every copy made from it (instance rows, attendee rows, the REPLY, the
    # other overrides) shares the result instead of building it again.
    return Property._parsed(
        name, value, params, line if canonical else _build_line(name, value, params)
    )


def _split_line(line: str, number: int, warnings: list[str]) -> Property:
    """Split an unfolded content line into name, parameters and raw value.

    The scanning is done by ``str.find`` and compiled patterns rather than a loop over
    characters: this runs once per content line of every calendar processed.
    """
    bare = _BARE_NAME.match(line)
    if bare is not None:
        return Property(bare.group(1).upper(), line[bare.end() :])
    simple = _SIMPLE_PARAMS.match(line)
    if simple is not None:
        return _split_simple(line, simple)
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
            return Property._parsed(name, line[i:], params, None)
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
    return Property._parsed(name, line[i + 1 :], params, None)


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
    # Overrides of a series repeat the same ATTENDEE/ORGANIZER/DTSTART lines: each
    # distinct parameterised line is split once and copied (copy-on-write) after.
    repeated: dict[str, Property] = {}
    for number, line in _unfold(text, warnings):
        count += 1
        if count > MAX_LINES:
            raise ICalError(f"more than {MAX_LINES} content lines", number)
        if not line or line.isspace():
            continue  # blank lines between components (seen from iCloud) are harmless
        prop = repeated.get(line)
        if prop is not None:
            prop = prop.copy()
        else:
            before = len(warnings)
            prop = _split_line(line, number, warnings)
            if prop._params and len(warnings) == before:
                repeated[line] = prop
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
    if line.isascii():
        # One octet per character: the same cut points as the byte loop below.
        n = len(line)
        if n <= FOLD_OCTETS:
            return line
        step = FOLD_OCTETS - 1
        return "\r\n ".join(
            [line[:FOLD_OCTETS], *(line[i : i + step] for i in range(FOLD_OCTETS, n, step))]
        )
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
