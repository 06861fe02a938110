"""Where the IMAP poller stopped, per (account, mailbox).

A UID is only meaningful together with the mailbox's UIDVALIDITY (RFC 3501 section
2.3.1.1): when UIDVALIDITY changes the mailbox was recreated and the poller must rescan
instead of trusting ``last_uid``.  That decision belongs to the poller; this module only
remembers both numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from gateway.store.models import ImapStateRow

__all__ = ["ImapState", "get", "set"]


@dataclass(frozen=True, slots=True)
class ImapState:
    uidvalidity: int
    last_uid: int
    updated_at: datetime


def get(s: Session, account: str, mailbox: str) -> ImapState | None:
    """The stored position, or ``None`` for a mailbox never polled."""
    row = s.get(ImapStateRow, (account, mailbox))
    if row is None:
        return None
    return ImapState(uidvalidity=row.uidvalidity, last_uid=row.last_uid, updated_at=row.updated_at)


def set(
    s: Session, account: str, mailbox: str, *, uidvalidity: int, last_uid: int, now: datetime
) -> None:
    """Remember the position after processing ``last_uid``."""
    row = s.get(ImapStateRow, (account, mailbox))
    if row is None:
        s.add(
            ImapStateRow(
                account=account,
                mailbox=mailbox,
                uidvalidity=uidvalidity,
                last_uid=last_uid,
                updated_at=now,
            )
        )
    else:
        row.uidvalidity = uidvalidity
        row.last_uid = last_uid
        row.updated_at = now
    s.flush()
