"""Email <-> iCalendar codec (RFC 6047 iMIP): the ``mime`` layer.

Pure functions over bytes and values; imports only :mod:`gateway.domain`, the stdlib
``email`` package and ``tnefparse``.

- :func:`gateway.mime.extract.extract`: raw inbound mail -> :class:`Extraction`
  (calendar parts, header facts, loop/bounce signals, RFC 3464 report).
- :func:`gateway.mime.identity.sender_identity`: trusted Authentication-Results,
  From/Sender/Reply-To -> :class:`~gateway.domain.identity.SenderIdentity`.
- :func:`gateway.mime.compose.compose_imip`: iTIP object + summary -> iMIP bytes.
- :func:`gateway.mime.dsn.parse_dsn`, :func:`gateway.mime.tnef.tnef_to_ical`: the
  delivery-report and Outlook TNEF decoders ``extract`` uses.
"""

from gateway.mime.compose import (
    GATEWAY_HEADER,
    ComposedMessage,
    ComposeError,
    ComposeRequest,
    EventSummary,
    compose_imip,
)
from gateway.mime.dsn import DeliveryReport, RecipientStatus, parse_dsn
from gateway.mime.extract import CalendarPart, Extraction, extract
from gateway.mime.identity import sender_identity

__all__ = [
    "GATEWAY_HEADER",
    "CalendarPart",
    "ComposeError",
    "ComposeRequest",
    "ComposedMessage",
    "DeliveryReport",
    "EventSummary",
    "Extraction",
    "RecipientStatus",
    "compose_imip",
    "extract",
    "parse_dsn",
    "sender_identity",
]
