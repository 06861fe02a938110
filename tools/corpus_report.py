"""Run every file of a corpus directory through :func:`gateway.mime.extract.extract`.

Usage: ``python tools/corpus_report.py [CORPUS_DIR]`` (default ``../shared/corpus``
relative to the repository).  Prints one row per file: parts found, methods (MIME
parameter vs calendar METHOD), warnings and problems, then totals.  Exit status 0.

File kinds: ``*.ics`` is a bare calendar body (wrapped as a one-part text/calendar
mail), ``*.dat``/``*.tnef`` a raw TNEF stream and ``*.b64`` base64 text of one
(both wrapped as an ``application/ms-tnef`` winmail.dat attachment); anything else
(``*.eml``, ``*.txt``) is a whole RFC 5322 message.  ``*.md`` files are skipped.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.mime.extract import Extraction, calendar_method, extract
from gateway.mime.identity import sender_identity

__all__ = ["Row", "main", "message_bytes", "report"]

_TNEF_SUFFIXES = (".dat", ".tnef")


@dataclass(frozen=True, slots=True)
class Row:
    path: str  # relative to the corpus directory
    kind: str  # eml, ics, tnef
    extraction: Extraction

    @property
    def outcome(self) -> str:
        """``parts`` | ``problem`` | ``no-calendar`` (the service's ignored outcome)."""
        if self.extraction.parts:
            return "parts"
        if self.extraction.problems:
            return "problem"
        return "no-calendar"


def _wrap(body: bytes, content_type: str, cte: str, filename: str | None = None) -> bytes:
    disposition = f'Content-Disposition: attachment; filename="{filename}"\r\n' if filename else ""
    head = (
        "From: corpus@report.invalid\r\nTo: gateway@report.invalid\r\n"
        "Subject: corpus file\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n{disposition}"
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    )
    return head.encode("ascii") + body


def message_bytes(path: Path) -> tuple[str, bytes]:
    """(kind, raw message) for one corpus file."""
    data = path.read_bytes()
    name = path.name.lower()
    if name.endswith(".ics"):
        # The file is what a client put in its text/calendar part: label it as the
        # client would have (RFC 6047 method= parameter equal to the METHOD inside).
        method = calendar_method(data.decode("utf-8", "replace"))
        param = f"; method={method}" if method else ""
        return "ics", _wrap(data, f"text/calendar; charset=utf-8{param}", "8bit")
    if name.endswith(".b64"):
        try:
            data = base64.b64decode(b"".join(data.split()), validate=False)
        except (binascii.Error, ValueError):
            data = b""
        name = name[:-4]
    if name.endswith(_TNEF_SUFFIXES) or path.name.lower().endswith(".b64"):
        encoded = base64.encodebytes(data)
        return "tnef", _wrap(encoded, "application/ms-tnef", "base64", "winmail.dat")
    return "eml", data


def report(corpus_dir: Path | str) -> list[Row]:
    """Extract every file under ``corpus_dir`` (sorted, recursive)."""
    root = Path(corpus_dir)
    rows: list[Row] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() == ".md":
            continue
        kind, raw = message_bytes(path)
        rows.append(Row(str(path.relative_to(root)), kind, extract(raw)))
    return rows


def _methods(ex: Extraction) -> str:
    out = []
    for p in ex.parts:
        mime = p.mime_method or "-"
        out.append(f"{mime}/{p.method or '-'}({p.source})")
    return ", ".join(out) or "-"


def main(argv: list[str] | None = None) -> int:
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("corpus_dir", nargs="?", default=str(default))
    parser.add_argument("-v", "--verbose", action="store_true", help="print warnings in full")
    parser.add_argument(
        "--trusted-authserv",
        action="append",
        default=[],
        metavar="ID",
        help="also print DKIM/DMARC read from Authentication-Results stamped by ID (repeatable)",
    )
    args = parser.parse_args(argv)
    rows = report(args.corpus_dir)
    counts: dict[str, int] = {}
    for row in rows:
        ex = row.extraction
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
        flags = []
        if ex.is_bounce:
            flags.append("bounce")
        if ex.dsn is not None:
            failed = ",".join(f"{r.final_recipient}={r.status}" for r in ex.dsn.recipients)
            flags.append(f"dsn[{ex.dsn.original_message_id}: {failed}]")
        if ex.is_auto_submitted:
            flags.append(f"auto-submitted={ex.auto_submitted}")
        if args.trusted_authserv and ex.authentication_results:
            si = sender_identity(
                ex, envelope_from="", trusted_authserv_ids=args.trusted_authserv, attendee_relays=()
            )
            flags.append(f"dkim={si.dkim}{list(si.dkim_domains)} dmarc={si.dmarc}")
        print(f"{row.path}")
        print(
            f"    {row.outcome:<11} parts={len(ex.parts)} methods(mime/cal)={_methods(ex)}"
            + (f" {' '.join(flags)}" if flags else "")
        )
        warnings = [*ex.warnings, *(f"part {p.index}: {w}" for p in ex.parts for w in p.warnings)]
        for w in warnings if args.verbose else warnings[:4]:
            print(f"    warning: {w}")
        if not args.verbose and len(warnings) > 4:
            print(f"    ... {len(warnings) - 4} more warnings (-v)")
        for p in ex.problems:
            print(f"    PROBLEM: {p}")
    total = len(rows)
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"\n{total} files: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
