"""Delivery status notifications (RFC 3464) for messages the gateway sent.

A bounce of an invitation must be mapped back to the attendee it failed for, so the
organiser copy can record SCHEDULE-STATUS/REQUEST-STATUS 5.x (ARCHITECTURE.md section
6).  This module reads the machine-readable part of the report; it never decides
anything.  The service finds the outbox row by the original Message-ID and the
attendee by ``final_recipient``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

from gateway.domain.addresses import normalise
from gateway.mime.headers import decode_value, message_ids, raw_values

__all__ = ["DeliveryReport", "RecipientStatus", "parse_dsn"]

# RFC 3464 section 2.3.3: action-value.
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
# RFC 3463 status code class.subject.detail, found in Status or a Diagnostic-Code.
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_MAX_DEPTH = 20


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a delivery-status report (RFC 3464 section 2.3)."""

    final_recipient: str  # normalised address, "" when the block has none
    original_recipient: str
    action: str  # failed/delayed/delivered/relayed/expanded, or "" when unrecognised
    status: str  # e.g. "5.1.1"
    diagnostic: str
    remote_mta: str = ""

    @property
    def permanent_failure(self) -> bool:
        """True for ``Action: failed`` with a 5.x.x status (RFC 3463 section 3.1)."""
        return self.action == "failed" and self.status.startswith("5")


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A parsed RFC 3464 report.

    ``original_message_ids`` holds every Message-ID found in the returned headers;
    some MTAs return messages carrying two (the corpus Postfix bounce does), so the
    service should try each.  ``original_message_id`` is the last one, which is the
    one a sender's own header normally ends up as when a client adds a second.
    """

    reporting_mta: str
    original_message_id: str | None
    original_message_ids: tuple[str, ...]
    original_subject: str | None
    recipients: tuple[RecipientStatus, ...]

    def failed(self) -> tuple[RecipientStatus, ...]:
        """Recipients whose delivery failed permanently."""
        return tuple(r for r in self.recipients if r.permanent_failure)


def _field(block: Message, name: str) -> str:
    values = raw_values(block, name)
    # Unfolded continuation lines keep their indentation: collapse it.
    return " ".join(decode_value(values[0]).split()) if values else ""


def _typed_address(value: str) -> str:
    """``rfc822; a@b`` -> ``a@b`` (RFC 3464 section 2.3.1 address-type prefix)."""
    _type, sep, rest = value.partition(";")
    return normalise(rest if sep else value)


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # Some MTAs base64-encode the report or label it text/plain: parse by hand.
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    text = text.replace("\r\n", "\n")
    parser = HeaderParser()
    return [parser.parsestr(chunk.strip() + "\n") for chunk in re.split(r"\n\s*\n", text)]


def _recipient(block: Message) -> RecipientStatus | None:
    final = _field(block, "Final-Recipient")
    original = _field(block, "Original-Recipient")
    if not final and not original:
        return None
    action = _field(block, "Action").lower().split(" ")[0]
    status = _field(block, "Status")
    diagnostic = _field(block, "Diagnostic-Code")
    match = _STATUS.search(status) or _STATUS.search(diagnostic)
    return RecipientStatus(
        final_recipient=_typed_address(final or original),
        original_recipient=_typed_address(original) if original else "",
        action=action if action in _ACTIONS else "",
        status=match.group(0) if match else status,
        diagnostic=diagnostic,
        remote_mta=_field(block, "Remote-MTA").partition(";")[2].strip(),
    )


def _returned_headers(part: Message) -> Message | None:
    ctype = part.get_content_type()
    if ctype in ("message/rfc822", "message/global"):
        payload = part.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            return payload[0]
    if ctype in ("text/rfc822-headers", "text/global-headers"):
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
        return HeaderParser().parsestr(text.replace("\r\n", "\n"))
    return None


def _parts(msg: Message, depth: int = 0) -> list[Message]:
    out = [msg]
    if depth < _MAX_DEPTH and msg.is_multipart() and msg.get_content_maintype() == "multipart":
        payload = msg.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    out.extend(_parts(sub, depth + 1))
    return out


def parse_dsn(msg: Message) -> DeliveryReport | None:
    """Read an RFC 3464 delivery report; ``None`` when ``msg`` is not one.

    Accepts ``multipart/report; report-type=delivery-status`` and, leniently, any
    message carrying a ``message/delivery-status`` part.  Never raises on malformed
    input; a report without per-recipient blocks gives an empty ``recipients``.
    """
    status_part: Message | None = None
    returned: Message | None = None
    for part in _parts(msg):
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            status_part = status_part or part
        elif status_part is not None or ctype.startswith(("message/", "text/rfc822")):
            returned = returned or _returned_headers(part)
    is_report = (
        msg.get_content_type() == "multipart/report"
        and str(msg.get_param("report-type", "")).lower() == "delivery-status"
    )
    if status_part is None and not is_report:
        return None

    blocks = _status_blocks(status_part) if status_part is not None else []
    reporting = _field(blocks[0], "Reporting-MTA").partition(";")[2].strip() if blocks else ""
    recipients = tuple(r for r in (_recipient(b) for b in blocks) if r is not None)

    ids: list[str] = []
    subject: str | None = None
    if returned is not None:
        for value in raw_values(returned, "Message-ID"):
            ids.extend(i for i in message_ids(decode_value(value)) if i not in ids)
        subj = raw_values(returned, "Subject")
        subject = decode_value(subj[0]) if subj else None
    return DeliveryReport(
        reporting_mta=reporting,
        original_message_id=ids[-1] if ids else None,
        original_message_ids=tuple(ids),
        original_subject=subject,
        recipients=recipients,
    )
