"""Small interfaces between the transports/workers and the use cases.

Transports (SMTP/LMTP listeners, the IMAP poller, the ``ingest`` command) only know
:class:`Intake`: hand it the raw bytes and the envelope, and it returns once the
message is durably journaled - only then may a transport answer 250 or mark an IMAP
message ``\\Seen`` (ARCHITECTURE.md section 6, "accepted means durable").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["FORWARD_METHOD", "Accepted", "Envelope", "Intake", "TemporaryFailure"]

#: Outbox method of a message relayed unchanged (outbound relay mode): sent with its
#: author's envelope sender rather than the gateway's.
FORWARD_METHOD = "FORWARD"


class TemporaryFailure(Exception):
    """The message could not be accepted now (database down, shutting down...).

    SMTP/LMTP answer ``451 4.3.0``; IMAP leaves the message unseen for a later pass.
    """


@dataclass(frozen=True, slots=True)
class Envelope:
    """Transport facts about one inbound message."""

    source: str  # smtp | lmtp | imap | ingest | relay
    mail_from: str  # envelope sender, normalised; "" for the null sender (bounces)
    rcpt_tos: tuple[str, ...]  # normalised local recipients
    peer: str = ""
    helo: str = ""
    imap_account: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The journal row that now holds the message."""

    journal_id: int
    duplicate: bool  # an identical delivery (same Message-ID and bytes) was seen before


class Intake(Protocol):
    """Durable acceptance of inbound mail."""

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        """Journal ``raw`` durably and schedule processing.

        Raises :class:`TemporaryFailure` when the message could not be stored.
        """
        ...
