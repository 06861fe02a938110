"""Who sent this mail, as far as the headers we trust can tell (ARCHITECTURE.md section 5).

``Authentication-Results`` (RFC 8601) is read only from headers whose authserv-id is
configured as trusted: anyone can write such a header, and RFC 8601 section 5 makes
the border MTA responsible for removing forged copies that carry its own id.  Of
the trusted headers only the topmost per authserv-id counts (the one our own MTA
added last); lower copies with the same id are noted and ignored, in case the border
MTA did not strip them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message

from gateway.domain.addresses import domain_of, normalise
from gateway.domain.identity import AuthVerdict, SenderIdentity
from gateway.mime import headers as hdr
from gateway.mime.extract import Extraction

__all__ = ["AuthResult", "parse_authentication_results", "sender_identity"]

_METHOD_RESULT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_-]*)(?:\s*/\s*\d+)?\s*=\s*([A-Za-z]+)")
_PROPERTY = re.compile(
    r"\b([A-Za-z0-9_-]+)\s*\.\s*([A-Za-z0-9_.-]+)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]+)"
)
_DKIM_FAIL = frozenset({"fail", "permerror", "policy"})


@dataclass(frozen=True, slots=True)
class AuthResult:
    """One resinfo of an Authentication-Results header (RFC 8601 section 2.2)."""

    method: str  # dkim, dmarc, spf, arc, ...
    result: str  # pass, fail, none, ...
    properties: dict[str, str]  # "header.d" -> "example.com"


def _strip_comments(value: str) -> str:
    """Remove RFC 5322 comments (nested parentheses), keeping quoted strings intact."""
    out: list[str] = []
    depth = 0
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\":
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            if ch == '"':
                quoted = True
            out.append(ch)
    return "".join(out)


def _split(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_authentication_results(value: str) -> tuple[str, list[AuthResult]]:
    """(authserv-id, results) of one header value; ("", []) when unparseable."""
    pieces = _split(_strip_comments(value))
    head = pieces[0].split()
    if not head:
        return "", []
    authserv_id = head[0].lower()
    results: list[AuthResult] = []
    for piece in pieces[1:]:
        m = _METHOD_RESULT.match(piece)
        if m is None:
            continue
        props = {
            f"{p.lower()}.{n.lower()}": v.strip('"')
            for p, n, v in _PROPERTY.findall(piece[m.end() :])
        }
        results.append(AuthResult(m.group(1).lower(), m.group(2).lower(), props))
    return authserv_id, results


def _relay_match(address: str, relays: Sequence[str]) -> bool:
    """``relays`` holds addresses or ``@domain`` entries (a whole relay domain)."""
    if not address:
        return False
    for relay in relays:
        entry = relay.strip().lower()
        if entry.startswith("@"):
            if domain_of(address) == entry[1:]:
                return True
        elif normalise(entry) == address:
            return True
    return False


def _dkim_domain(props: dict[str, str]) -> str:
    if "header.d" in props:
        return props["header.d"].lower()
    ident = props.get("header.i", "")
    return ident.rpartition("@")[2].lower() if ident else ""


def sender_identity(
    source: Extraction | Message,
    *,
    envelope_from: str,
    trusted_authserv_ids: Sequence[str],
    attendee_relays: Sequence[str],
) -> SenderIdentity:
    """Build the :class:`SenderIdentity` the authorisation step consumes.

    ``source`` is the :class:`Extraction` of the mail (preferred: no second parse) or a
    parsed :class:`email.message.Message`.  ``envelope_from`` is the SMTP MAIL FROM
    ("" for the null sender).  ``attendee_relays`` lists addresses (or ``@domain``)
    that send on behalf of attendees, e.g. Google's calendar notification address.
    """
    if isinstance(source, Extraction):
        from_addresses = source.from_addresses
        sender = source.sender
        reply_to = source.reply_to
        auth_values: Sequence[str] = source.authentication_results
    else:
        from_addresses = hdr.addresses(hdr.raw_values(source, "From"))
        senders = hdr.addresses(hdr.raw_values(source, "Sender"))
        sender = senders[0] if senders else ""
        reply_to = hdr.addresses(hdr.raw_values(source, "Reply-To"))
        auth_values = [
            hdr.decode_value(v) for v in hdr.raw_values(source, "Authentication-Results")
        ]

    trusted = {t.strip().lower() for t in trusted_authserv_ids if t.strip()}
    notes: list[str] = []
    used_ids: set[str] = set()
    dkim_pass: list[str] = []
    dkim_failed = False
    dmarc = AuthVerdict.NONE
    for value in auth_values:
        authserv_id, results = parse_authentication_results(value)
        if authserv_id not in trusted:
            notes.append(f"Authentication-Results from untrusted {authserv_id or '?'!r} ignored")
            continue
        if authserv_id in used_ids:
            notes.append(f"older Authentication-Results from {authserv_id!r} ignored")
            continue
        used_ids.add(authserv_id)
        for r in results:
            if r.method == "dkim":
                if r.result == "pass":
                    d = _dkim_domain(r.properties)
                    if d and d not in dkim_pass:
                        dkim_pass.append(d)
                elif r.result in _DKIM_FAIL:
                    dkim_failed = True
            elif r.method == "dmarc":
                # A trusted fail anywhere wins: the default rule refuses on dmarc=fail.
                if r.result == "fail":
                    dmarc = AuthVerdict.FAIL
                elif r.result == "pass" and dmarc is AuthVerdict.NONE:
                    dmarc = AuthVerdict.PASS
    if dkim_pass:
        dkim = AuthVerdict.PASS
    elif dkim_failed:
        dkim = AuthVerdict.FAIL
    else:
        dkim = AuthVerdict.NONE

    envelope = normalise(envelope_from)
    relay = any(_relay_match(a, attendee_relays) for a in (*from_addresses, envelope))
    return SenderIdentity(
        envelope_from=envelope,
        from_addresses=tuple(from_addresses),
        sender=sender,
        reply_to=tuple(reply_to),
        dkim=dkim,
        dkim_domains=tuple(dkim_pass),
        dmarc=dmarc,
        trusted_relay=relay,
        notes=tuple(dict.fromkeys(notes)),
    )
