"""tools/corpus_report.py over the permissive corpus copies in tests/data/corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import icalendar

ROOT = Path(__file__).resolve().parent.parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "corpus_report", ROOT / "tools" / "corpus_report.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["corpus_report"] = module
    spec.loader.exec_module(module)
    return module


corpus_report = _tool()


def test_every_corpus_copy_is_listed_in_origin_md() -> None:
    origin = (CORPUS / "ORIGIN.md").read_text()
    files = [p for p in CORPUS.rglob("*") if p.is_file() and p.name != "ORIGIN.md"]
    assert len(files) >= 20
    for path in files:
        assert f"| {path.relative_to(CORPUS)} |" in origin


def test_every_file_gives_parts_or_an_explicit_outcome() -> None:
    rows = corpus_report.report(CORPUS)
    assert len(rows) >= 20
    outcomes = {row.path: row.outcome for row in rows}
    for row in rows:
        ex = row.extraction
        assert row.outcome in ("parts", "problem", "no-calendar")
        if row.outcome == "parts":
            for part in ex.parts:
                assert part.text.startswith("BEGIN:VCALENDAR\r\n")
                assert part.text.rstrip("\r\n").upper().endswith("END:VCALENDAR")
        elif row.outcome == "problem":
            assert all(p.strip() for p in ex.problems)
    # Known negative cases get the outcome they should.
    assert outcomes["apple/apple-mail-ical3-reply-missing-calendar-part.eml"] == "no-calendar"
    assert outcomes["misc/dsn-bounce-with-calendarserver-request.eml"] == "no-calendar"
    assert sum(1 for o in outcomes.values() if o == "parts") >= len(rows) - 2


def test_bare_ics_files_keep_their_method_and_parse() -> None:
    rows = {row.path: row for row in corpus_report.report(CORPUS)}
    expectations = {
        "kmail-kontact/ics/libkcal35-counter-with-leftover-qp.ics": "COUNTER",
        "kmail-kontact/ics/libkcal35-declinecounter.ics": "DECLINECOUNTER",
        "misc/ics/davmail-reply-vfreebusy.ics": "REPLY",
        "outlook/ics/exchange2010-publish-eastern-standard-time-unquoted-tzid.ics": "PUBLISH",
        "zimbra/ics/zimbra-cancel-single-occurrence-recurrence-id.ics": "CANCEL",
    }
    for path, method in expectations.items():
        (part,) = rows[path].extraction.parts
        assert part.method == method
        assert part.warnings == ()
    ok = rows["kmail-kontact/ics/libkcal35-request-delegated.ics"].extraction.parts[0]
    assert icalendar.Calendar.from_ical(ok.text).get("METHOD") == "REQUEST"


def test_apple_replies_without_method_parameter_are_warned_about() -> None:
    rows = {row.path: row for row in corpus_report.report(CORPUS / "apple")}
    (part,) = rows["apple-mail-ical3-reply-missing-organizer.eml"].extraction.parts
    assert part.method == "REPLY"
    assert part.mime_method is None
    assert any("method= parameter" in w for w in part.warnings)


def test_main_prints_a_table_and_exits_zero(capsys) -> None:  # type: ignore[no-untyped-def]
    assert corpus_report.main([str(CORPUS)]) == 0
    out = capsys.readouterr().out
    assert "apple/apple-mail-ical3-reply-accepted-qp-attachment.eml" in out
    assert "files:" in out.splitlines()[-1]
