"""Printing command results as text tables or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

__all__ = ["InputError", "print_json", "print_table", "read_input"]


class InputError(Exception):
    """The command's input file cannot be read (the message says which and why)."""


def read_input(name: str) -> bytes:
    """The bytes of ``name``, or of standard input for ``-``."""
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        with open(name, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"cannot read {name}: {exc.strerror or exc}") from exc


def print_json(value: Any, out: TextIO | None = None) -> None:
    """Pretty JSON with a trailing newline (stable key order for scripts and diffs)."""
    stream = out or sys.stdout
    json.dump(value, stream, indent=2, sort_keys=True, default=str)
    stream.write("\n")


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: TextIO | None = None
) -> None:
    """A plain aligned table; long cells are cut so each row stays on one line."""
    stream = out or sys.stdout
    if not rows:
        stream.write("(none)\n")
        return
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [min(60, max(len(col), *(len(r[i]) for r in cells))) for i, col in enumerate(columns)]
    stream.write("  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True)))
    stream.write("\n")
    for r in cells:
        line = "  ".join(c[:w].ljust(w) for c, w in zip(r, widths, strict=True))
        stream.write(line.rstrip() + "\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value).replace("\n", " ")
