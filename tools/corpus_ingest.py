"""Run every corpus file through the whole gateway (``ingest``) and report outcomes.

Usage: ``python tools/corpus_ingest.py [CORPUS_DIR] [--json]`` (default
``../shared/corpus``).  Each file gets a fresh SQLite database in which every address
its calendars name (ORGANIZER and ATTENDEEs) is a local user with the ``accept``
policy, so the engine acts on the message for the role it concerns.  Bare ``.ics``
files are wrapped in a mail whose From is the calendar's author (the ORGANIZER for
organiser methods, the first ATTENDEE for REPLY/COUNTER/REFRESH), because the gateway
rightly refuses scheduling messages from anyone else.  Prints one row per file and a
count per outcome; exit status 0 unless the gateway itself crashed on a file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.domain.addresses import normalise
from gateway.domain.ical import ICalError, parse
from gateway.domain.model import UserPolicy
from gateway.mime.extract import extract
from gateway.services.directory import StaticDirectory
from gateway.services.processor import ProcessingOptions, Processor
from gateway.services.runtime import GatewayServices
from gateway.store import migrate
from gateway.store.facade import Store
from tools.corpus_report import message_bytes

__all__ = ["ingest_file", "main"]

_ATTENDEE_METHODS = ("REPLY", "COUNTER", "REFRESH")


def _addresses(texts: list[str]) -> tuple[list[str], str, str]:
    """Every calendar-user address, the method, and the calendar's author."""
    found: list[str] = []
    method = ""
    author = ""
    for text in texts:
        try:
            roots = parse(text)
        except ICalError:
            continue
        for root in roots:
            method = method or (root.value("METHOD") or "").strip().upper()
            for comp in root.walk():
                for prop in comp.properties:
                    if prop.name not in ("ORGANIZER", "ATTENDEE"):
                        continue
                    addr = normalise(prop.value)
                    if "@" not in addr or len(addr) > 200:
                        continue
                    if addr not in found:
                        found.append(addr)
                    if not author:
                        wanted = "ATTENDEE" if method in _ATTENDEE_METHODS else "ORGANIZER"
                        if prop.name == wanted:
                            author = addr
    return found, method, author


def _rewrap_from(raw: bytes, author: str) -> bytes:
    if not author:
        return raw
    return raw.replace(b"From: corpus@report.invalid", f"From: {author}".encode(), 1)


def ingest_file(path: Path, workdir: Path) -> dict[str, Any]:
    """Ingest one corpus file into a fresh database; returns its report row."""
    kind, raw = message_bytes(path)
    extraction = extract(raw)
    addresses, method, author = _addresses([p.text for p in extraction.parts])
    if kind == "ics":
        raw = _rewrap_from(raw, author)
    users = [UserPolicy(address=a, policy="accept", party_crashers="accept") for a in addresses]
    url = f"sqlite:///{workdir / (path.stem[:40] + '.sqlite3')}"
    migrate.upgrade(url)
    processor = Processor(StaticDirectory(users), ProcessingOptions(hostname="corpus.invalid"))
    services = GatewayServices(Store(url), processor, lambda: datetime.now(UTC))
    try:
        _jid, _dup, outcomes = services.ingest_now(raw, recipients=[], sender=author)
        error = ""
    except Exception as exc:  # the report must cover every file, crash or not
        outcomes, error = [], f"{type(exc).__name__}: {exc}"
    finally:
        services.close()
    return {"file": str(path), "kind": kind, "method": method, "outcomes": outcomes, "error": error}


def main(argv: list[str] | None = None) -> int:
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus_dir", nargs="?", default=str(default))
    parser.add_argument("--json", action="store_true", help="print every row as JSON")
    args = parser.parse_args(argv)
    root = Path(args.corpus_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".md")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            row = ingest_file(path, Path(tmp))
            row["file"] = str(path.relative_to(root))
            rows.append(row)
    if args.json:
        json.dump(rows, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for row in rows:
            summary = (
                ", ".join(f"{o.get('method') or '-'}:{o['outcome']}" for o in row["outcomes"])
                or row["error"]
            )
            print(f"{row['file']}\n    {summary}")
            for o in row["outcomes"]:
                print(f"      {o['outcome']}: {str(o['reason'])[:160]}")
    totals = Counter(o["outcome"] for row in rows for o in row["outcomes"])
    crashed = [row["file"] for row in rows if row["error"]]
    print(f"\n{len(rows)} files; outcomes: {dict(sorted(totals.items()))}", file=sys.stderr)
    if crashed:
        print(f"gateway errors on {len(crashed)} file(s): {crashed}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
