"""Calendar-user address normalisation.

RFC 5545 section 3.3.3 makes CAL-ADDRESS a URI; in iMIP (RFC 6047 section 2.2) it is a
``mailto:`` URI whose address must match the mail address.  Clients differ in case
(``MAILTO:``), stray whitespace left by line folding, and display-name wrappers
(``"Test User <a@b>"`` seen from libkcal).  Everything that compares addresses goes
through :func:`normalise` so the store, the engine and the transports agree.
"""

from __future__ import annotations

import re

_ANGLE = re.compile(r"<([^<>]+)>")
_WS = re.compile(r"\s+")


# Issue 5: one message normalises the same few addresses dozens of times (each
# ATTENDEE line per instance, the owner, the organiser, SENT-BY...).  The result
# depends on the string alone and strings are immutable, so a memo cannot leak
# anything between messages.  Bounded in entries and key length so hostile input
# cannot grow it: when full it is simply emptied (cheaper than LRU bookkeeping).
_MEMO: dict[str, str] = {}
_MEMO_MAX_ENTRIES = 4096
_MEMO_MAX_KEY = 320  # an RFC 5321 path (256) plus "mailto:", a CN wrapper, folding


def normalise(value: str | None) -> str:
    """Return the comparable form of a calendar-user address or mail address.

    ``mailto:`` is stripped case-insensitively, angle-bracket wrappers are unwrapped,
    folding whitespace is removed and the result is lower-cased.  Local parts are
    case-sensitive in theory (RFC 5321 section 2.4) but every mail system we meet
    treats them case-insensitively, and iTIP clients routinely change their case.
    An empty or missing value gives ``""``.
    """
    if not value:
        return ""
    hit = _MEMO.get(value)
    if hit is not None:
        return hit
    result = _normalise(value)
    if len(value) <= _MEMO_MAX_KEY:
        if len(_MEMO) >= _MEMO_MAX_ENTRIES:
            _MEMO.clear()
        _MEMO[value] = result
    return result


def _normalise(value: str) -> str:
    text = value.strip()
    match = _ANGLE.search(text)
    if match:
        text = match.group(1)
    text = _WS.sub("", text)
    # Strip repeatedly: KDE has sent "mailto:mailto:user@host"; normalise must be
    # idempotent or the same attendee would compare unequal to itself.
    while text[:7].lower() == "mailto:":
        text = text[7:]
    return text.strip().strip('"').lower()


def to_uri(address: str) -> str:
    """Return the ``mailto:`` URI for a normalised (or raw) address."""
    return "mailto:" + normalise(address)


def domain_of(address: str) -> str:
    """Return the domain part of an address ("" when there is none)."""
    addr = normalise(address)
    return addr.rpartition("@")[2] if "@" in addr else ""
