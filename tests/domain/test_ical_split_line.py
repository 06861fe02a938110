"""The content-line splitter (RFC 5545 section 3.1) against its original char-by-char form.

``_split_line`` runs for every line of every calendar, so it was rewritten to scan with
``str.find`` and compiled patterns.  These tests pin that the rewrite gives exactly the
original results: the same name, parameters, value, warnings, and the same errors.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.ical import ICalError, Property, _split_line, parse


def reference_split_line(line: str, number: int, warnings: list[str]) -> Property:
    """The implementation before the rewrite, kept verbatim as the oracle."""
    n = len(line)
    i = 0
    while i < n and line[i] not in ";:":
        i += 1
    name = line[:i].strip().upper()
    if not name or i == n:
        raise ICalError(f"content line has no ':' separator: {line[:60]!r}", number)
    params: dict[str, list[str]] = {}
    while i < n and line[i] == ";":
        i += 1
        eq = line.find("=", i)
        colon = line.find(":", i)
        if eq < 0 or (0 <= colon < eq and line.find('"', i, colon) < 0):
            if colon < 0:
                raise ICalError(f"parameter without '=' in {name}", number)
            warnings.append(f"line {number}: {name} has a parameter without '='; read as value")
            return Property(name, line[i:], params)
        pname = line[i:eq].strip().upper()
        i = eq + 1
        values: list[str] = []
        while True:
            if i < n and line[i] == '"':
                end = line.find('"', i + 1)
                if end < 0:
                    raise ICalError(f"unterminated quoted parameter {pname} in {name}", number)
                values.append(line[i + 1 : end])
                i = end + 1
            else:
                start = i
                while i < n and line[i] not in ",;:":
                    i += 1
                values.append(line[start:i])
            if i < n and line[i] == ",":
                i += 1
                continue
            break
        params.setdefault(pname, []).extend(values)
        if i >= n:
            raise ICalError(f"content line has no ':' separator: {line[:60]!r}", number)
        if line[i] not in ";:":
            raise ICalError(f"unexpected character {line[i]!r} after parameter {pname}", number)
    return Property(name, line[i + 1 :], params)


def outcome(fn: object, line: str) -> tuple[object, list[str]]:
    warnings: list[str] = []
    try:
        result: object = fn(line, 7, warnings)  # type: ignore[operator]
    except ICalError as exc:
        result = ("error", str(exc), exc.line)
    return result, warnings


def test_plain_property_line() -> None:
    prop = _split_line("uid:abc;def:ghi", 1, [])
    assert (prop.name, prop.value, prop.params) == ("UID", "abc;def:ghi", {})


def test_quoted_and_multi_valued_parameters() -> None:
    line = 'ATTENDEE;CN="Doe, Jane";DELEGATED-TO="mailto:a@x","mailto:b@x";RSVP=TRUE:mailto:j@x'
    prop = _split_line(line, 1, [])
    assert prop.name == "ATTENDEE"
    assert prop.value == "mailto:j@x"
    assert prop.params == {
        "CN": ["Doe, Jane"],
        "DELEGATED-TO": ["mailto:a@x", "mailto:b@x"],
        "RSVP": ["TRUE"],
    }


def test_zimbra_semicolon_for_colon_is_read_as_value_with_a_warning() -> None:
    warnings: list[str] = []
    prop = _split_line("ORGANIZER;mailto:x@y", 3, warnings)
    assert (prop.name, prop.value) == ("ORGANIZER", "mailto:x@y")
    assert warnings == ["line 3: ORGANIZER has a parameter without '='; read as value"]


def test_corpus_style_calendar_parses_the_same_lines() -> None:
    text = (
        "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
        'ATTENDEE;PARTSTAT=NEEDS-ACTION;CN="A, B":mailto:a@x\r\n'
        "DTSTART;TZID=Europe/Berlin:20261121T100000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    [cal] = parse(text)
    [event] = cal.components
    assert [p.name for p in event.properties] == ["UID", "ATTENDEE", "DTSTART"]
    assert event.properties[1].params == {"PARTSTAT": ["NEEDS-ACTION"], "CN": ["A, B"]}


_LINE = st.lists(
    st.sampled_from([*'AbZ9-;:=,"\t x\u00e9', "mailto", "CN=", "TZID", "ATTENDEE"]), max_size=25
).map("".join)


_WORD = st.sampled_from(["", "a", "Bc", "x y", "mailto:a@x", "é", '"q"', '"a,b"', '"', " "])
_PARAM = st.tuples(
    st.sampled_from(["CN", "rsvp", " tzid ", "X-A", ""]), st.lists(_WORD, max_size=3)
)
# Lines shaped like real ones (name, parameters with single and multiple values, value),
# with the separators sometimes missing or doubled.
_SHAPED = st.builds(
    lambda name, params, sep, value: (
        name + "".join(f";{p}={','.join(vs)}" for p, vs in params) + sep + value
    ),
    st.sampled_from(["ATTENDEE", "dtstart", "X-Y", " UID", "", "A B"]),
    st.lists(_PARAM, max_size=3),
    st.sampled_from([":", ";", "", "::", ",:"]),
    _WORD,
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(_LINE, _SHAPED))
def test_split_line_agrees_with_the_original_on_any_line(line: str) -> None:
    assert outcome(_split_line, line) == outcome(reference_split_line, line)
