"""Cheap, careful reading of inbound header values.

Inbound mail is parsed with ``policy=compat32`` for speed (about seven times faster
than ``policy=default`` on a typical invitation), so header values arrive as raw
strings: still folded, RFC 2047 encoded words undecoded, and raw 8-bit bytes kept as
surrogate escapes.  The helpers here turn them into plain text without ever raising:
an inbound header is data to judge, not something that may crash the gateway.

Nothing read here is ever copied into an outgoing header object (ARCHITECTURE.md
section 9): :mod:`gateway.mime.compose` rebuilds every value from text.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from datetime import datetime
from email.header import decode_header, make_header
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from gateway.domain.addresses import normalise

__all__ = [
    "HeaderIndex",
    "addresses",
    "decode_value",
    "first",
    "message_ids",
    "parse_date",
    "raw_values",
    "unfold_value",
]

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_MSGID = re.compile(r"<[^<>\s]+>")
_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _undo_surrogates(value: str) -> str:
    """Recover text from raw 8-bit header bytes (RFC 6532 allows UTF-8 headers)."""
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_value(value: object) -> str:
    """Return a header value as unfolded text with RFC 2047 encoded words decoded.

    Control characters are replaced by spaces: a decoded encoded-word may carry CR/LF
    (``=?utf-8?q?a=0D=0ABcc:?=``) and nothing downstream should ever see one.
    """
    text = value if isinstance(value, str) else str(value)
    text = _undo_surrogates(_FOLD.sub("", text))
    if "=?" in text:
        # A broken encoded word: keep the raw text rather than lose the header.
        with contextlib.suppress(ValueError, LookupError, UnicodeError, AssertionError):
            text = str(make_header(decode_header(text)))
    return _CTRL.sub(" ", text).strip()


def unfold_value(value: object) -> str:
    """A header value unfolded, 8-bit text recovered, controls blanked; NOT RFC 2047 decoded.

    Address lists must be parsed before their encoded words are decoded (RFC 2047
    section 5: an encoded word may only stand for a phrase word, never for part of an
    addr-spec).  Decoding first would turn a display name such as
    ``=?utf-8?q?boss=40bank.example?= <mallory@evil.example>`` into a second address.
    """
    text = value if isinstance(value, str) else str(value)
    return _CTRL.sub(" ", _undo_surrogates(_FOLD.sub("", text))).strip()


def raw_values(msg: Message, name: str) -> list[str]:
    """Every raw value of header ``name`` in order (top first), not decoded."""
    wanted = name.lower()
    return [v if isinstance(v, str) else str(v) for k, v in msg.raw_items() if k.lower() == wanted]


class HeaderIndex:
    """All top-level headers of a message by lower-case name, built in one pass."""

    __slots__ = ("_values",)

    def __init__(self, msg: Message) -> None:
        self._values: dict[str, list[str]] = {}
        for k, v in msg.raw_items():
            self._values.setdefault(k.lower(), []).append(v if isinstance(v, str) else str(v))

    def raw(self, name: str) -> list[str]:
        """Raw values of ``name``, top first (empty list when absent)."""
        return self._values.get(name.lower(), [])

    def first(self, name: str) -> str | None:
        """The first value of ``name``, decoded, or ``None`` when absent."""
        values = self._values.get(name.lower())
        return decode_value(values[0]) if values else None


def first(msg: Message, name: str) -> str | None:
    """The first value of ``name``, decoded, or ``None`` when absent."""
    values = raw_values(msg, name)
    return decode_value(values[0]) if values else None


_SIMPLE_ITEM = re.compile(
    r"^\s*(?:[^<>\"(),;:@]*<([^<>\s\"(),;:]+@[^<>\s\"(),;:]+)>|([^<>\s\"(),;:]+@[^<>\s\"(),;:]+))\s*$"
)


def _simple_addresses(text: str) -> list[str] | None:
    """Fast path for the common ``Name <a@b>, c@d`` form; ``None`` when not that simple."""
    if '"' in text or "(" in text or ";" in text:
        return None
    out: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue
        m = _SIMPLE_ITEM.match(item)
        if m is None:
            return None
        out.append(m.group(1) or m.group(2))
    return out


def addresses(values: Iterable[str]) -> tuple[str, ...]:
    """Normalised mail addresses from address-list header values, in order, unique.

    Encoded words are left encoded: only addr-specs are wanted, and an encoded display
    name must never be read as an address (see :func:`unfold_value`).
    """
    decoded = [unfold_value(v) for v in values]
    out: list[str] = []
    simple: list[str] = []
    for text in decoded:
        found = _simple_addresses(text)
        if found is None:
            break
        simple.extend(found)
    else:
        for addr in simple:
            norm = normalise(addr)
            if norm and norm not in out:
                out.append(norm)
        return tuple(out)
    try:
        pairs = getaddresses(decoded)
    except (ValueError, IndexError, TypeError):  # pragma: no cover - defensive
        pairs = []
    for _name, addr in pairs:
        norm = normalise(addr)
        if norm and "@" in norm and norm not in out:
            out.append(norm)
    return tuple(out)


def message_ids(value: str | None) -> tuple[str, ...]:
    """The ``<id>`` tokens of a Message-ID/In-Reply-To/References value, in order."""
    if not value:
        return ()
    return tuple(_MSGID.findall(value))


def parse_date(value: str | None) -> datetime | None:
    """The Date header as an aware datetime, or ``None`` when absent or unparseable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
