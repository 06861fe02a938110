"""Who sent a message, as far as the transport can tell.

The calendar data says who it claims to come from; the transport says who actually
sent it (ARCHITECTURE.md section 5).  The transport layer fills this value in and the
engine's authorisation step takes it as an input; the domain never reads headers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AuthVerdict(StrEnum):
    """A DKIM/DMARC result from a trusted ``Authentication-Results`` header (RFC 8601)."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    NONE = "none"  # no result, or no trusted header at all


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    """Transport-level identities of one inbound message, all normalised addresses.

    ``from_addresses`` holds every address in From (RFC 5322 allows several);
    ``trusted_relay`` is true when the From/envelope address is one of the configured
    relays that send on behalf of attendees (e.g. Google's calendar notification
    address), in which case ``reply_to`` names the real attendee.
    """

    envelope_from: str = ""
    from_addresses: tuple[str, ...] = ()
    sender: str = ""
    reply_to: tuple[str, ...] = ()
    dkim: AuthVerdict = AuthVerdict.NONE
    dkim_domains: tuple[str, ...] = ()
    dmarc: AuthVerdict = AuthVerdict.NONE
    trusted_relay: bool = False
    # True for messages the operator injected locally (``imip-gateway ingest`` with
    # --trusted, ``imip-gateway send``): the local operator is trusted as any identity.
    local_submission: bool = False
    notes: tuple[str, ...] = field(default=())

    def claimed(self) -> tuple[str, ...]:
        """Addresses that may act as the message's author, most specific first."""
        out: list[str] = []
        for addr in (*self.from_addresses, self.sender):
            if addr and addr not in out:
                out.append(addr)
        if self.trusted_relay:
            for addr in self.reply_to:
                if addr and addr not in out:
                    out.append(addr)
        return tuple(out)
