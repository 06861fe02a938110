"""Copy-on-write properties, remembered lines and memos cannot leak changes (issue 5).

:class:`~gateway.domain.ical.Property` shares its parameter dict between copies and
remembers its serialised line; :func:`~gateway.domain.ical.parse` splits a repeated
line once and copies it; :func:`~gateway.domain.addresses.normalise` is memoised.
These tests pin that every one of those is invisible: a change made through any
public path to one object never shows in another object, in a later parse of the
same text, or in a later message, and serialising always gives what a fresh
computation from ``name``/``value``/``params`` gives.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import addresses
from gateway.domain.addresses import normalise
from gateway.domain.ical import (
    FOLD_OCTETS,
    Component,
    Property,
    _quote_param,
    _split_line,
    parse,
    parse_one,
    serialize,
)


def fresh_line(prop: Property) -> str:
    """The unfolded line computed from scratch (the codec's rule, RFC 5545 3.1/3.2)."""
    params = prop.params_copy()
    parts = [prop.name]
    parts.extend(f"{k}={','.join(_quote_param(v) for v in vs)}" for k, vs in params.items())
    return ";".join(parts) + ":" + prop.value


def reference_fold(line: str) -> str:
    """The byte-wise folding loop (75 octets, never inside a UTF-8 sequence)."""
    data = line.encode("utf-8")
    if len(data) <= FOLD_OCTETS:
        return line
    out: list[str] = []
    limit, pos = FOLD_OCTETS, 0
    while pos < len(data):
        end = min(pos + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        out.append(data[pos:end].decode("utf-8"))
        pos = end
        limit = FOLD_OCTETS - 1
    return "\r\n ".join(out)


CAL = (
    "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\nUID:u1\r\n"
    "ATTENDEE;CN=Ann;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:ann@x\r\n"
    'ATTENDEE;CN="Bob";ROLE=CHAIR:mailto:bob@x\r\n'
    "END:VEVENT\r\nBEGIN:VEVENT\r\nUID:u1\r\nRECURRENCE-ID:20270101T100000Z\r\n"
    "ATTENDEE;CN=Ann;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:ann@x\r\n"
    'ATTENDEE;CN="Bob";ROLE=CHAIR:mailto:bob@x\r\n'
    "END:VEVENT\r\nEND:VCALENDAR\r\n"
)


def attendees(cal: Component) -> list[Property]:
    return [p for c in cal.components for p in c.get_all("ATTENDEE")]


# --- copies are independent ------------------------------------------------------


MUTATIONS: dict[str, Callable[[Property], object]] = {
    "set_param": lambda p: p.set_param("PARTSTAT", "ACCEPTED"),
    "remove_param": lambda p: p.set_param("CN", None),
    "params item": lambda p: p.params.__setitem__("X-NEW", ["1"]),
    "params list in place": lambda p: p.params.setdefault("CN", []).append("Z"),
    "params pop": lambda p: p.params.pop("CN", None),
    "params assigned": lambda p: setattr(p, "params", {"ROLE": ["OPT-PARTICIPANT"]}),
    "value": lambda p: setattr(p, "value", "mailto:other@x"),
    "name": lambda p: setattr(p, "name", "X-ATTENDEE"),
}


def test_each_mutation_of_a_copy_leaves_the_original_and_its_siblings_alone() -> None:
    for label, mutate in MUTATIONS.items():
        original = _split_line("ATTENDEE;CN=Ann;PARTSTAT=NEEDS-ACTION:mailto:ann@x", 1, [])
        before = (original.to_line(), original.params_copy(), repr(original))
        first, second = original.copy(), original.copy()
        mutate(first)
        assert (original.to_line(), original.params_copy(), repr(original)) == before, label
        assert second == original, label
        assert second.to_line() == before[0], label
        assert first.to_line() == fresh_line(first), label


def test_each_mutation_of_the_original_leaves_earlier_copies_alone() -> None:
    for label, mutate in MUTATIONS.items():
        original = _split_line('ATTENDEE;CN="Ann";PARTSTAT=NEEDS-ACTION:mailto:ann@x', 1, [])
        copy = original.copy()
        snapshot = (copy.to_line(), copy.params_copy())
        mutate(original)
        assert (copy.to_line(), copy.params_copy()) == snapshot, label
        assert original.to_line() == fresh_line(original), label


def test_a_dict_held_by_the_caller_is_never_shared_or_cached() -> None:
    params = {"CN": ["Ann"]}
    prop = Property("ATTENDEE", "mailto:ann@x", params)
    copy = prop.copy()
    assert prop.to_line() == "ATTENDEE;CN=Ann:mailto:ann@x"
    params["CN"] = ["Changed"]  # the caller still owns the dict it passed in
    params["RSVP"] = ["TRUE"]
    assert prop.to_line() == "ATTENDEE;CN=Changed;RSVP=TRUE:mailto:ann@x"
    assert copy.to_line() == "ATTENDEE;CN=Ann:mailto:ann@x"


def test_a_dict_read_through_params_and_changed_later_is_seen_by_to_line() -> None:
    prop = _split_line("ATTENDEE;CN=Ann:mailto:ann@x", 1, [])
    held = prop.params
    assert prop.to_line() == "ATTENDEE;CN=Ann:mailto:ann@x"
    held["CN"][0] = "Zed"  # in-place change of a list inside the dict
    assert prop.to_line() == "ATTENDEE;CN=Zed:mailto:ann@x"


def test_param_list_hands_out_a_copy() -> None:
    prop = _split_line("ATTENDEE;MEMBER=a,b:mailto:ann@x", 1, [])
    sibling = prop.copy()
    prop.param_list("MEMBER").append("c")
    prop.params_copy()["MEMBER"].append("d")
    assert prop.param_list("MEMBER") == sibling.param_list("MEMBER") == ["a", "b"]
    assert sibling.to_line() == "ATTENDEE;MEMBER=a,b:mailto:ann@x"


def test_equality_and_repr_are_those_of_the_former_dataclass() -> None:
    a = _split_line("ATTENDEE;CN=Ann:mailto:ann@x", 1, [])
    b = Property("ATTENDEE", "mailto:ann@x", {"CN": ["Ann"]})
    assert a == b
    assert a.copy() == b
    assert repr(a) == "Property(name='ATTENDEE', value='mailto:ann@x', params={'CN': ['Ann']})"
    b.set_param("CN", "Bob")
    assert a != b
    assert Property("X", "1") != ("X", "1", {})


# --- parse: repeated lines and repeated parses ------------------------------------


def test_repeated_lines_in_one_calendar_are_independent_objects() -> None:
    cal = parse_one(CAL)
    ann_master, bob_master, ann_override, bob_override = attendees(cal)
    assert ann_master == ann_override
    assert ann_master is not ann_override
    ann_override.set_param("PARTSTAT", "ACCEPTED")
    bob_override.params["CN"] = ["Robert"]
    assert ann_master.param("PARTSTAT") == "NEEDS-ACTION"
    assert bob_master.param("CN") == "Bob"
    assert ann_override.to_line() == fresh_line(ann_override)
    assert bob_override.to_line() == "ATTENDEE;CN=Robert;ROLE=CHAIR:mailto:bob@x"


def test_changing_one_parse_result_does_not_change_the_next_parse() -> None:
    first = parse_one(CAL)
    for prop in attendees(first):
        prop.set_param("PARTSTAT", "DECLINED")
        prop.params["X-LEAK"] = ["1"]
        prop.value = "mailto:leak@x"
    assert parse_one(CAL) == parse_one(CAL)
    assert serialize(parse_one(CAL)) == serialize(parse_one(CAL))
    again = attendees(parse_one(CAL))
    assert [p.to_line() for p in again] == [
        "ATTENDEE;CN=Ann;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:ann@x",
        "ATTENDEE;CN=Bob;ROLE=CHAIR:mailto:bob@x",
        "ATTENDEE;CN=Ann;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:ann@x",
        "ATTENDEE;CN=Bob;ROLE=CHAIR:mailto:bob@x",
    ]


def test_a_repeated_line_with_a_warning_warns_every_time() -> None:
    text = (
        "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nORGANIZER;mailto:o@x\r\nEND:VEVENT\r\n"
        "BEGIN:VEVENT\r\nORGANIZER;mailto:o@x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    warnings: list[str] = []
    parse(text, warnings)
    assert warnings == [
        "line 3: ORGANIZER has a parameter without '='; read as value",
        "line 6: ORGANIZER has a parameter without '='; read as value",
    ]


# --- the remembered line is always the fresh one ----------------------------------

_NAME = st.sampled_from(["ATTENDEE", "attendee", "X-a1", "DTSTART", "Cn"])
_PNAME = st.sampled_from(["CN", "cn", "RSVP", "DELEGATED-TO", "X-Y", "Role"])
_PVALUE = st.sampled_from(
    ["", "a", "Ann Lee", "mailto:a@x", "Doe, Jane", "a;b", "é", "x=y", "TRUE", "1:2"]
)
_QUOTE = st.booleans()


@st.composite
def _lines(draw: st.DrawFn) -> str:
    name = draw(_NAME)
    params = draw(
        st.lists(
            st.tuples(_PNAME, st.lists(st.tuples(_PVALUE, _QUOTE), min_size=1, max_size=3)),
            max_size=4,
        )
    )
    value = draw(st.sampled_from(["mailto:a@x", "", 'say "hi"', "a;b:c,d", "ü" * 30]))
    out = name
    for pname, values in params:
        rendered = []
        for text, quote in values:
            needs = any(c in text for c in ";:,")
            rendered.append(f'"{text}"' if quote or needs else text)
        out += f";{pname}={','.join(rendered)}"
    return f"{out}:{value}"


@settings(max_examples=800, deadline=None)
@given(_lines())
def test_to_line_of_a_parsed_property_and_its_copies_is_always_fresh(line: str) -> None:
    prop = _split_line(line, 1, [])
    copy = prop.copy()
    assert prop.to_line() == fresh_line(prop)
    assert copy.to_line() == fresh_line(copy)
    copy.set_param("RSVP", "FALSE")
    assert copy.to_line() == fresh_line(copy)
    assert prop.to_line() == fresh_line(prop)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "é", "€", "😀", " ", ";", "\\"]), max_size=300))
def test_folding_matches_the_octet_loop_and_never_splits_utf8(value: str) -> None:
    comp = Component("VEVENT", [Property("DESCRIPTION", value)])
    text = serialize(comp)
    assert text.split("\r\n")[1:-2] == reference_fold("DESCRIPTION:" + value).split("\r\n")
    for physical in text.split("\r\n"):
        assert len(physical.encode("utf-8")) <= FOLD_OCTETS
    assert (
        parse_one("BEGIN:VCALENDAR\r\n" + text + "END:VCALENDAR\r\n")
        .sub("VEVENT")[0]
        .value("DESCRIPTION")
        == value
    )


# --- normalise memo ----------------------------------------------------------------


def test_normalise_memo_gives_the_same_answers_and_stays_bounded() -> None:
    samples = ["MAILTO:Ann@X.example", "  mailto:mailto:b@y ", '"C D" <c@Z>', "", "plain"]
    first = [normalise(s) for s in samples]
    assert first == [normalise(s) for s in samples]
    assert first == ["ann@x.example", "b@y", "c@z", "", "plain"]
    for i in range(addresses._MEMO_MAX_ENTRIES + 10):
        normalise(f"mailto:user{i}@x")
    assert len(addresses._MEMO) <= addresses._MEMO_MAX_ENTRIES
    huge = "mailto:" + "a" * 5000 + "@x"
    assert normalise(huge) == huge[7:]
    assert huge not in addresses._MEMO
    assert [normalise(s) for s in samples] == first
