"""Length limits for values that end up in indexes.

PostgreSQL refuses a B-tree index entry larger than about 2700 bytes ("index row size
exceeds maximum"), so an attacker-chosen 10 kB UID, ATTENDEE address or Message-ID would
make an INSERT fail -- and a message that can never be stored is retried for ever instead
of being answered.  Values used as *keys* (UID, attendee address) are refused with
:class:`FieldTooLongError` so the caller can quarantine the message with a precise reason;
values that are only *informational* (Message-ID in the journal, UID in an outcome row)
are clipped, because recording the message must never fail.

900 bytes is far above anything real clients send (Message-IDs and UIDs are < 300 bytes
in the corpus) and leaves room for the other columns of composite indexes.
"""

from __future__ import annotations

__all__ = ["MAX_KEY_BYTES", "FieldTooLongError", "check_key", "clip"]

MAX_KEY_BYTES = 900


class FieldTooLongError(ValueError):
    """A key value is too long to be stored and indexed."""

    def __init__(self, field: str, size: int) -> None:
        super().__init__(f"{field} is {size} bytes long; at most {MAX_KEY_BYTES} are supported")
        self.field = field
        self.size = size


def check_key(field: str, value: str) -> str:
    """Return ``value`` unchanged, or raise :class:`FieldTooLongError`."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise FieldTooLongError(field, size)
    return value


def clip(value: str | None) -> str | None:
    """``value`` cut to at most :data:`MAX_KEY_BYTES` UTF-8 bytes (never mid-character)."""
    if value is None:
        return None
    data = value.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_KEY_BYTES:
        return value
    return data[:MAX_KEY_BYTES].decode("utf-8", "ignore")
