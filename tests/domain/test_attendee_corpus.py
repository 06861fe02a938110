"""Every permissively licensed corpus calendar through parse_itip + validate + process.

The files are the byte-for-byte copies in ``tests/data/corpus`` (see its ORIGIN.md).
Each message gets a sensible outcome with a reason and never an exception; the
attendee-side ones are pinned, and every applied invitation is idempotent when the
same message arrives again (RFC 5546 section 2.1.5: same SEQUENCE and DTSTAMP).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.domain import engine
from gateway.domain.addresses import normalise
from gateway.domain.apply import apply_changes
from gateway.domain.message import parse_itip
from gateway.domain.model import ITipMessage, Method, Outcome
from gateway.domain.validate import validate
from tests.domain.helpers import att_context

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
FILES = sorted(CORPUS.rglob("*.ics"))
NOW = datetime(2026, 1, 1, tzinfo=UTC)

# Attendee-side expectations per file (all messages of the file), each a deliberate choice.
EXPECTED = {
    "google/ics/google-request-update-kde-test.ics": Outcome.APPLIED,
    "kmail-kontact/ics/korganizer5-request.ics": Outcome.APPLIED,
    "kmail-kontact/ics/libkcal35-declinecounter.ics": Outcome.IGNORED_UNKNOWN,
    "kmail-kontact/ics/libkcal35-request-delegated.ics": Outcome.APPLIED,
    # Leftover quoted-printable "FREQ=3DWEEKLY": 3.6 invalid rule, status reply sent.
    "kmail-kontact/ics/libkcal35-request-recurring-attach-valarm.ics": Outcome.REJECTED_INVALID,
    # Section 3: VJOURNAL has no REQUEST (3.14 unsupported capability).
    "kmail-kontact/ics/libkcal35-vjournal-request.ics": Outcome.REJECTED_INVALID,
    "kmail-kontact/ics/libkcal35-vtodo-request-delegated.ics": Outcome.APPLIED,
    # A REQUEST with neither ORGANIZER nor ATTENDEE cannot be scheduled (3.11).
    "misc/ics/blackberry-bis3-request-4-vevents.ics": Outcome.REJECTED_INVALID,
    "misc/ics/blackberry-bis3-request-allday.ics": Outcome.APPLIED,
    "misc/ics/kde-bug235749-request-mailto-mailto-yahoo-organizer.ics": Outcome.APPLIED,
    "misc/ics/podio-api-request.ics": Outcome.REJECTED_INVALID,
    "outlook/ics/exchange-cdo-request-tzid-gmt-offsets-text.ics": Outcome.REJECTED_INVALID,
    "outlook/ics/exchange2010-publish-eastern-standard-time-unquoted-tzid.ics": Outcome.APPLIED,
    "outlook/ics/exchange2010-request-pacific-standard-time.ics": Outcome.REJECTED_INVALID,
    # Arrives before its REQUEST: held (5.2.1).
    "zimbra/ics/zimbra-cancel-single-occurrence-recurrence-id.ics": Outcome.HELD_PENDING,
}

ORGANIZER_SIDE = {Method.REPLY, Method.REFRESH, Method.COUNTER}


def _parties(msg: ITipMessage) -> tuple[str, str]:
    """(owner, sender): the first attendee and the organiser, or the reverse for
    organiser-side methods."""
    comp = msg.components[0]
    organizer = normalise(comp.value("ORGANIZER")) or "organizer@example.invalid"
    attendees = [
        a for a in (normalise(p.value) for p in comp.get_all("ATTENDEE")) if a != organizer
    ]
    attendee = attendees[0] if attendees else "owner@example.invalid"
    if msg.method in ORGANIZER_SIDE:
        return organizer, attendee
    return attendee, organizer


def test_the_corpus_copies_are_present() -> None:
    assert len(FILES) >= 15
    assert {f.relative_to(CORPUS).as_posix() for f in FILES} >= set(EXPECTED)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(CORPUS).as_posix())
def test_corpus_file_gets_a_sensible_outcome(path: Path) -> None:
    result = parse_itip(path.read_text(encoding="utf-8", errors="replace"))
    assert result.messages, result.problems
    name = path.relative_to(CORPUS).as_posix()
    for msg in result.messages:
        validate(msg, [])  # never raises
        owner, sender = _parties(msg)
        ctx = att_context(owner=owner, sender=sender, policy="accept", now=NOW)
        decision = engine.process(msg, None, ctx)
        assert decision.reason
        if msg.method not in ORGANIZER_SIDE and msg.component_type != "VFREEBUSY":
            assert decision.outcome == EXPECTED[name], decision.reason
        if decision.outcome == Outcome.REJECTED_INVALID:
            assert "section 3" in decision.reason
        for out in decision.outgoing:
            assert out.recipients
            assert out.calendar.value("METHOD") == out.method
        if decision.outcome == Outcome.APPLIED and msg.method not in ORGANIZER_SIDE:
            stored = apply_changes(None, decision.changes)
            again = engine.process(msg, stored, ctx)
            assert again.outcome == Outcome.DUPLICATE, again.reason
            assert again.outgoing == []
