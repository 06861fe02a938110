"""Building blocks for pipeline tests: a real migrated store and iMIP mail texts."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from gateway.domain.model import BookingRules, UserPolicy
from gateway.services.directory import StaticDirectory
from gateway.services.processor import ProcessingOptions, Processor
from gateway.services.runtime import GatewayServices
from gateway.store import migrate
from gateway.store.facade import Store

ORGANIZER = "alice@example.org"  # a local user (organiser-side tests)
REMOTE_ORGANIZER = "olga@remote.example"  # not local: invitations from outside
ATTENDEE = "bob@example.net"
ROOM = "room-1@example.net"
OUTSIDER = "mallory@evil.example"

USERS = (
    UserPolicy(address=ORGANIZER, display_name="Alice Organiser", policy="manual"),
    UserPolicy(address=ATTENDEE, display_name="Bob", policy="accept", aliases=("b@example.net",)),
    UserPolicy(
        address=ROOM,
        display_name="Room 1",
        kind="room",
        policy="accept-if-free",
        booking=BookingRules(window_days=365, max_duration_minutes=240),
    ),
)


class FrozenClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@contextmanager
def open_services(url: str, clock: FrozenClock | None = None) -> Iterator[GatewayServices]:
    """A migrated database with the test users, opened like the CLI opens it."""
    migrate.upgrade(url)
    counter = itertools.count(1)
    processor = Processor(
        StaticDirectory(USERS),
        ProcessingOptions(hostname="gw.test", lease_seconds=30, max_attempts=3, marker="gw.test"),
        new_message_id=lambda: f"<out-{next(counter)}@gw.test>",
    )
    store = Store(url)
    services = GatewayServices(store, processor, clock or FrozenClock())
    try:
        yield services
    finally:
        services.close()


def vevent(
    *,
    uid: str = "evt-1@example.org",
    method: str = "REQUEST",
    sequence: int = 0,
    dtstamp: str = "20260101T120000Z",
    start: str = "20260110T100000Z",
    end: str = "20260110T110000Z",
    organizer: str = ORGANIZER,
    attendees: tuple[tuple[str, str], ...] = ((ATTENDEE, "NEEDS-ACTION"),),
    summary: str = "Planning",
    extra: str = "",
    recurrence_id: str = "",
    rsvp: bool = True,
) -> str:
    """A VCALENDAR with one VEVENT, CRLF line ends."""
    lines = [
        "BEGIN:VCALENDAR",
        "PRODID:-//test//pipeline//EN",
        "VERSION:2.0",
        f"METHOD:{method}",
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"SEQUENCE:{sequence}",
        f"DTSTAMP:{dtstamp}",
        f"DTSTART:{start}",
        f"DTEND:{end}",
        f"SUMMARY:{summary}",
    ]
    if recurrence_id:
        lines.append(f"RECURRENCE-ID:{recurrence_id}")
    if organizer:
        lines.append(f"ORGANIZER;CN=Alice:mailto:{organizer}")
    for addr, partstat in attendees:
        rsvp_param = ";RSVP=TRUE" if rsvp and partstat == "NEEDS-ACTION" else ""
        lines.append(f"ATTENDEE;PARTSTAT={partstat}{rsvp_param}:mailto:{addr}")
    if extra:
        lines.extend(extra.strip().splitlines())
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"


_ids = itertools.count(1)


def imip_mail(
    calendar: str,
    *,
    sender: str,
    to: str,
    method: str = "REQUEST",
    message_id: str | None = None,
    extra_headers: str = "",
) -> bytes:
    """An iMIP message (RFC 6047) as a client would send it."""
    mid = message_id or f"<in-{next(_ids)}@client.test>"
    head = (
        f"From: {sender}\r\n"
        f"To: {to}\r\n"
        "Subject: Invitation\r\n"
        "Date: Mon, 05 Jan 2026 09:00:00 +0000\r\n"
        f"Message-ID: {mid}\r\n"
        "MIME-Version: 1.0\r\n"
        f"{extra_headers}"
        'Content-Type: multipart/alternative; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=UTF-8\r\n"
        "\r\n"
        "You are invited.\r\n"
        "--b1\r\n"
        f"Content-Type: text/calendar; method={method}; charset=UTF-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    )
    return (head + calendar + "--b1--\r\n").encode("utf-8")


def outbox_rows(services: GatewayServices) -> list[dict[str, object]]:
    from gateway.services.queries import outbox_list

    return services.store.read_sync(outbox_list)


def payload_of(services: GatewayServices, outbox_id: object) -> bytes:
    from gateway.store import outbox

    def get(s: object) -> bytes:
        row = outbox.get(s, int(str(outbox_id)))  # type: ignore[arg-type]
        assert row is not None
        return bytes(row.payload)

    return services.store.read_sync(get)


Runner = Callable[..., tuple[int, bool, list[dict[str, object]]]]


def drain(services: GatewayServices) -> int:
    """Process every pending journal row (local deliveries included), as the worker would."""
    total = 0
    while True:
        ids = services.store.run_sync(services.processor.claim, services.clock(), 50)
        if not ids:
            return total
        services.store.run_sync(services.processor.process_batch, ids, services.clock())
        total += len(ids)
