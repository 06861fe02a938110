"""RFC 5546 section 3 restriction tables: every (method, component) pair, each rule."""

from __future__ import annotations

import pytest

from gateway.domain.message import parse_itip
from gateway.domain.model import ITipMessage
from gateway.domain.validate import TABLES, Violation, table_for, validate

# Every combination the section 3 overview table marks "Yes".
DEFINED = {
    ("PUBLISH", "VEVENT"), ("REQUEST", "VEVENT"), ("REPLY", "VEVENT"), ("ADD", "VEVENT"),
    ("CANCEL", "VEVENT"), ("REFRESH", "VEVENT"), ("COUNTER", "VEVENT"),
    ("DECLINECOUNTER", "VEVENT"),
    ("PUBLISH", "VFREEBUSY"), ("REQUEST", "VFREEBUSY"), ("REPLY", "VFREEBUSY"),
    ("PUBLISH", "VTODO"), ("REQUEST", "VTODO"), ("REPLY", "VTODO"), ("ADD", "VTODO"),
    ("CANCEL", "VTODO"), ("REFRESH", "VTODO"), ("COUNTER", "VTODO"),
    ("DECLINECOUNTER", "VTODO"),
    ("PUBLISH", "VJOURNAL"), ("ADD", "VJOURNAL"), ("CANCEL", "VJOURNAL"),
}  # fmt: skip


def _message(method: str, comp: str, body: str, cal_extra: str = "") -> ITipMessage:
    text = (
        "BEGIN:VCALENDAR\nPRODID:-//t//EN\nVERSION:2.0\n"
        f"METHOD:{method}\n{cal_extra}BEGIN:{comp}\n{body.strip()}\nEND:{comp}\nEND:VCALENDAR\n"
    )
    result = parse_itip(text)
    assert result.messages, result.problems
    return result.messages[0]


REQUEST_BODY = """
UID:u1
DTSTAMP:20260101T000000Z
DTSTART:20260110T100000Z
DTEND:20260110T110000Z
SUMMARY:s
ORGANIZER:mailto:a@example.com
ATTENDEE:mailto:b@example.com
"""


def _codes(violations: list[Violation]) -> list[tuple[str, str]]:
    return [(v.code, v.property) for v in violations]


def test_tables_cover_exactly_the_combinations_section_3_defines() -> None:
    assert set(TABLES) == DEFINED


def test_undefined_combination_is_unsupported_capability() -> None:
    msg = _message("REQUEST", "VJOURNAL", "UID:j\nDTSTAMP:20260101T000000Z\nDTSTART:20260101")
    assert _codes(validate(msg)) == [("3.14", "METHOD")]


@pytest.mark.parametrize(
    ("method", "comp", "required"),
    [
        ("REQUEST", "VEVENT", {"ATTENDEE", "DTSTAMP", "DTSTART", "ORGANIZER", "SUMMARY", "UID"}),
        ("REPLY", "VEVENT", {"ATTENDEE", "DTSTAMP", "ORGANIZER", "UID"}),
        ("ADD", "VEVENT", {"DTSTAMP", "DTSTART", "ORGANIZER", "SEQUENCE", "SUMMARY", "UID"}),
        ("CANCEL", "VEVENT", {"DTSTAMP", "ORGANIZER", "SEQUENCE", "UID"}),
        ("REQUEST", "VFREEBUSY", {"ATTENDEE", "DTEND", "DTSTAMP", "DTSTART", "ORGANIZER", "UID"}),
        ("REQUEST", "VTODO", {"ATTENDEE", "DTSTAMP", "DTSTART", "ORGANIZER", "PRIORITY"}),
        ("PUBLISH", "VJOURNAL", {"DESCRIPTION", "DTSTAMP", "DTSTART", "ORGANIZER", "UID"}),
    ],
)
def test_required_properties_are_transcribed_from_the_rfc(
    method: str, comp: str, required: set[str]
) -> None:
    table = table_for(method, comp)
    assert table is not None
    assert required <= (table.one | table.one_plus)


def test_valid_request_has_no_violation() -> None:
    warnings: list[str] = []
    assert validate(_message("REQUEST", "VEVENT", REQUEST_BODY), warnings) == []
    assert warnings == []


def test_request_without_attendee_is_3_11() -> None:
    body = REQUEST_BODY.replace("ATTENDEE:mailto:b@example.com\n", "")
    assert _codes(validate(_message("REQUEST", "VEVENT", body))) == [("3.11", "ATTENDEE")]


def test_request_without_dtstart_is_3_11_but_missing_summary_only_warns() -> None:
    body = REQUEST_BODY.replace("DTSTART:20260110T100000Z\n", "").replace("SUMMARY:s\n", "")
    warnings: list[str] = []
    assert _codes(validate(_message("REQUEST", "VEVENT", body), warnings)) == [("3.11", "DTSTART")]
    assert any("SUMMARY" in w for w in warnings)


def test_reply_with_several_attendees_warns_and_leaves_the_choice_to_the_organiser() -> None:
    # Section 3.2.3 says exactly one; old clients copy every ATTENDEE.  The organiser
    # side picks the one matching the sender, so this is a warning, not a rejection.
    body = "UID:u1\nDTSTAMP:20260101T000000Z\nORGANIZER:mailto:a@example.com\n"
    body += "ATTENDEE;PARTSTAT=ACCEPTED:mailto:b@example.com\nATTENDEE:mailto:c@example.com"
    warnings: list[str] = []
    assert validate(_message("REPLY", "VEVENT", body), warnings) == []
    assert any("2 ATTENDEE" in w for w in warnings)


def test_reply_without_organizer_is_lenient_for_outlook() -> None:
    body = "UID:u1\nDTSTAMP:20260101T000000Z\nATTENDEE;PARTSTAT=ACCEPTED:mailto:b@example.com"
    warnings: list[str] = []
    assert validate(_message("REPLY", "VEVENT", body), warnings) == []
    assert any("ORGANIZER" in w for w in warnings)


def test_publish_with_attendees_is_ignored_with_warning() -> None:
    body = REQUEST_BODY
    warnings: list[str] = []
    assert validate(_message("PUBLISH", "VEVENT", body), warnings) == []
    assert any("must not contain ATTENDEE" in w for w in warnings)


def test_dtend_and_duration_together_is_accepted_with_a_warning_dtend_wins() -> None:
    # RFC 5545 3.6.1 forbids both, but real clients (Fastmail-style MIME::Entity mails in
    # the corpus) send both; the gateway keeps the invitation and says which one it used.
    body = REQUEST_BODY + "DURATION:PT1H\n"
    warnings: list[str] = []
    assert validate(_message("REQUEST", "VEVENT", body), warnings) == []
    assert any("DTEND and DURATION" in w and "DTEND is used" in w for w in warnings)


def test_vtodo_due_and_duration_together_warns_and_due_wins() -> None:
    body = (
        "UID:t\nDTSTAMP:20260101T000000Z\nDTSTART:20260101T000000Z\nDUE:20260102T000000Z\n"
        "DURATION:PT1H\nPRIORITY:1\nSUMMARY:x\nORGANIZER:mailto:a@example.com\n"
        "ATTENDEE:mailto:b@example.com"
    )
    warnings: list[str] = []
    assert validate(_message("REQUEST", "VTODO", body), warnings) == []
    assert any("DUE and DURATION" in w and "DUE is used" in w for w in warnings)


def test_add_must_not_carry_recurrence_properties() -> None:
    body = REQUEST_BODY + "SEQUENCE:2\nRRULE:FREQ=DAILY\n"
    assert _codes(validate(_message("ADD", "VEVENT", body))) == [("3.13", "RRULE")]


def test_add_needs_a_sequence_above_zero() -> None:
    body = REQUEST_BODY + "SEQUENCE:0\n"
    assert _codes(validate(_message("ADD", "VEVENT", body))) == [("3.1", "SEQUENCE")]


def test_duplicate_summary_warns_but_duplicate_dtstart_is_an_error() -> None:
    warnings: list[str] = []
    dup_summary = REQUEST_BODY + "SUMMARY;LANGUAGE=en:other\n"
    assert validate(_message("REQUEST", "VEVENT", dup_summary), warnings) == []
    assert any("SUMMARY" in w and "first" in w for w in warnings)
    dup_start = REQUEST_BODY + "DTSTART:20260111T100000Z\n"
    assert ("3.1", "DTSTART") in _codes(validate(_message("REQUEST", "VEVENT", dup_start)))


def test_malformed_date_time_is_3_5_not_a_guess() -> None:
    # RFC 5546 section 4.2.1 itself carries "DTEND:19970701T2100000Z".
    body = REQUEST_BODY.replace("DTEND:20260110T110000Z", "DTEND:19970701T2100000Z")
    assert _codes(validate(_message("REQUEST", "VEVENT", body))) == [("3.5", "DTEND")]


def test_end_before_start_is_3_5() -> None:
    body = REQUEST_BODY.replace("DTEND:20260110T110000Z", "DTEND:20260110T090000Z")
    assert _codes(validate(_message("REQUEST", "VEVENT", body))) == [("3.5", "DTEND")]


@pytest.mark.parametrize(
    "rule", ["FREQ=3DWEEKLY", "BYDAY=MO", "FREQ=DAILY;COUNT=2;UNTIL=20260101T000000Z", "junk"]
)
def test_unusable_rrule_is_3_6(rule: str) -> None:
    body = REQUEST_BODY + f"RRULE:{rule}\n"
    assert _codes(validate(_message("REQUEST", "VEVENT", body))) == [("3.6", "RRULE")]


def test_empty_organizer_address_is_3_7() -> None:
    body = REQUEST_BODY.replace("ORGANIZER:mailto:a@example.com", "ORGANIZER:mailto:")
    assert _codes(validate(_message("REQUEST", "VEVENT", body))) == [("3.7", "ORGANIZER")]


def test_version_other_than_2_0_is_3_9() -> None:
    text = (
        "BEGIN:VCALENDAR\nPRODID:x\nVERSION:1.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n"
        + REQUEST_BODY.strip()
        + "\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    msg = parse_itip(text).messages[0]
    assert _codes(validate(msg)) == [("3.9", "VERSION")]


def test_missing_prodid_and_version_only_warn() -> None:
    text = "BEGIN:VCALENDAR\nMETHOD:REQUEST\nBEGIN:VEVENT\n" + REQUEST_BODY.strip()
    msg = parse_itip(text + "\nEND:VEVENT\nEND:VCALENDAR\n").messages[0]
    warnings: list[str] = []
    assert validate(msg, warnings) == []
    assert any("PRODID" in w for w in warnings)
    assert any("VERSION" in w for w in warnings)


def test_cancelled_override_inside_a_request_is_kept_with_a_warning() -> None:
    # Google puts STATUS:CANCELLED exceptions inside REQUESTs (3.2.2 lists TENTATIVE and
    # CONFIRMED only); refusing them would lose the cancellation.
    warnings: list[str] = []
    body = REQUEST_BODY + "RECURRENCE-ID:20260110T100000Z\nSTATUS:CANCELLED\n"
    assert validate(_message("REQUEST", "VEVENT", body), warnings) == []
    assert any("STATUS:CANCELLED" in w for w in warnings)


def test_single_component_methods_reject_several_components() -> None:
    text = (
        "BEGIN:VCALENDAR\nPRODID:x\nVERSION:2.0\nMETHOD:ADD\n"
        + ("BEGIN:VEVENT\n" + REQUEST_BODY.strip() + "\nSEQUENCE:1\nEND:VEVENT\n") * 2
        + "END:VCALENDAR\n"
    )
    msg = parse_itip(text).messages[0]
    assert ("3.4", "VEVENT") in _codes(validate(msg))


def test_freebusy_request_needs_its_range_and_local_times_warn() -> None:
    body = (
        "UID:f\nDTSTAMP:20260101T000000Z\nORGANIZER:mailto:a@example.com\n"
        "ATTENDEE:mailto:b@example.com\nDTSTART:20260101T080000Z\nDTEND:20260101T200000"
    )
    warnings: list[str] = []
    assert validate(_message("REQUEST", "VFREEBUSY", body), warnings) == []
    assert any("not in UTC" in w for w in warnings)
    no_end = body.replace("\nDTEND:20260101T200000", "")
    assert _codes(validate(_message("REQUEST", "VFREEBUSY", no_end))) == [("3.11", "DTEND")]


def test_request_status_value_escapes_text() -> None:
    v = Violation("3.1", "LOCATION", "x")
    assert v.request_status() == "3.1;Invalid property value;LOCATION"


def test_validated_checks_a_message_once_and_gives_each_caller_its_warnings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.domain import validate as module

    calls: list[ITipMessage] = []
    real = module.validate

    def counting(msg: ITipMessage, warnings: list[str] | None = None) -> list[Violation]:
        calls.append(msg)
        return real(msg, warnings)

    monkeypatch.setattr(module, "validate", counting)
    # No ORGANIZER (a violation) and no PRODID (a warning).
    body = REQUEST_BODY.replace("ORGANIZER:mailto:a@example.com\n", "")
    text = "BEGIN:VCALENDAR\nVERSION:2.0\nMETHOD:REQUEST\nBEGIN:VEVENT\n" + body.strip()
    msg = parse_itip(text + "\nEND:VEVENT\nEND:VCALENDAR\n").messages[0]
    first: list[str] = []
    second: list[str] = []
    one = module.validated(msg, first)
    # A later caller (the next local recipient) gets the same answer without a check,
    # even though a decision changed the components meanwhile.
    msg.components[0].properties.clear()
    two = module.validated(msg, second)
    assert len(calls) == 1
    assert _codes(one) == _codes(two) == [("3.11", "ORGANIZER")]
    assert one is not two  # callers may extend their lists
    assert first == second
    assert any("PRODID" in w for w in first)
