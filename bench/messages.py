"""Realistic iMIP messages for the benchmark (RFC 6047 over RFC 5546 payloads).

Two client styles, alternated so the gateway sees both shapes it meets in practice:

* ``outlook``: Exchange-like headers (Thread-Index, X-MS-*), ``multipart/alternative``
  with a quoted-printable ``text/plain`` and a **base64** ``text/calendar``;
* ``google``: Gmail-like headers (DKIM, X-Google-*), ``multipart/mixed`` around a
  ``multipart/alternative`` (``text/plain``, ``text/html``, 7bit ``text/calendar``)
  plus the same calendar again as an ``invite.ics`` attachment (base64).

Every message gets a unique UID and Message-ID.  A typical 5-attendee invitation is
about 4-6 KB, like the mail measured in issue 5; the sizes grow with the attendee count
(1000 attendees: ~90 KB) and with recurrence overrides.

Nothing here reads the clock: callers pass ``now`` (UTC), so a run is reproducible.
"""

from __future__ import annotations

import base64
import quopri
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "BENCH_DOMAIN",
    "ORGANISER",
    "RESPONDER",
    "BenchMessage",
    "EventSpec",
    "organiser_event_ics",
    "reply_mail",
    "request_mail",
    "request_workload",
]

BENCH_DOMAIN = "bench.example"
#: The local attendee (policy "accept") who receives invitations and auto-answers.
RESPONDER = f"bob@{BENCH_DOMAIN}"
#: The local organiser (policy "manual") whose stored events receive replies.
ORGANISER = f"alice@{BENCH_DOMAIN}"
TZID = "Europe/Berlin"

VTIMEZONE = (
    "BEGIN:VTIMEZONE\r\n"
    f"TZID:{TZID}\r\n"
    "BEGIN:DAYLIGHT\r\n"
    "TZOFFSETFROM:+0100\r\n"
    "TZOFFSETTO:+0200\r\n"
    "TZNAME:CEST\r\n"
    "DTSTART:19700329T020000\r\n"
    "RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\n"
    "END:DAYLIGHT\r\n"
    "BEGIN:STANDARD\r\n"
    "TZOFFSETFROM:+0200\r\n"
    "TZOFFSETTO:+0100\r\n"
    "TZNAME:CET\r\n"
    "DTSTART:19701025T030000\r\n"
    "RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\n"
    "END:STANDARD\r\n"
    "END:VTIMEZONE\r\n"
)

_FIRST = ("anna", "ben", "carla", "dev", "emil", "fatima", "goran", "hana", "ivan", "julia")
_DOMAINS = ("remote.example", "partner.example", "customer.example", "vendor.example")
_TITLES = (
    "Quarterly planning",
    "Design review: intake pipeline",
    "1:1",
    "Customer onboarding call",
    "Release retrospective",
    "Budget sync",
)
_DESCRIPTION = (
    "Hi all,\\n\\nlet's use this slot to go through the open items from last week, "
    "agree on owners and dates, and look at the risks for the next milestone. "
    "Please add topics to the shared agenda beforehand.\\n\\n"
    "Join online: https://meet.example/abc-defg-hij\\nDial-in: +49 30 1234567 PIN 9876#\\n"
)


@dataclass(frozen=True, slots=True)
class BenchMessage:
    """One SMTP transaction the load generator sends."""

    mail_from: str
    rcpt_to: str
    message_id: str  # with angle brackets, as in the header
    data: bytes  # CRLF line ends, not dot-stuffed
    kind: str  # "request" | "reply"
    attendees: int
    overrides: int = 0
    uid: str = ""
    # For a REPLY: who answered what, so the run can check the organiser copy.
    attendee: str = ""
    partstat: str = ""
    instance: int = 0  # > 0: answers one occurrence, not the series


@dataclass(frozen=True, slots=True)
class EventSpec:
    """The shape of one event: attendee count and recurrence overrides."""

    attendees: int = 5
    overrides: int = 0  # > 0: weekly RRULE with this many RECURRENCE-ID overrides

    @property
    def label(self) -> str:
        return f"{self.attendees}att" + (f"+{self.overrides}ovr" if self.overrides else "")


@dataclass
class _Ids:
    """Deterministic unique identifiers for one generated batch."""

    prefix: str
    counter: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(5))

    def next(self) -> int:
        self.counter += 1
        return self.counter


def attendee_address(index: int) -> str:
    """The ``index``-th remote attendee (stable, so replies can name them)."""
    return f"{_FIRST[index % len(_FIRST)]}.{index}@{_DOMAINS[index % len(_DOMAINS)]}"


def _fold(line: str) -> str:
    """RFC 5545 section 3.1: lines longer than 75 octets are folded."""
    raw = line.encode("utf-8")
    if len(raw) <= 75:
        return line + "\r\n"
    out: list[str] = []
    while len(raw) > 75:
        cut = 75 if not out else 74
        while cut > 0 and (raw[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
            cut -= 1
        out.append(raw[:cut].decode("utf-8"))
        raw = raw[cut:]
    out.append(raw.decode("utf-8"))
    return "\r\n ".join(out) + "\r\n"


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _local(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%S")


def _attendee_lines(organiser_cn: str, attendees: list[tuple[str, str]]) -> str:
    out = []
    for addr, partstat in attendees:
        name = addr.split("@", 1)[0].replace(".", " ").title()
        rsvp = ";RSVP=TRUE" if partstat == "NEEDS-ACTION" else ""
        out.append(
            _fold(
                f"ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT={partstat}{rsvp}"
                f';CN="{name}";X-NUM-GUESTS=0:mailto:{addr}'
            )
        )
    return "".join(out)


def _vevent(
    *,
    uid: str,
    organiser: str,
    attendees: list[tuple[str, str]],
    start: datetime,
    stamp: datetime,
    title: str,
    sequence: int = 0,
    rrule: str = "",
    recurrence_id: datetime | None = None,
    description: bool = True,
) -> str:
    end = start + timedelta(minutes=45)
    lines = [
        "BEGIN:VEVENT\r\n",
        f"DTSTART;TZID={TZID}:{_local(start)}\r\n",
        f"DTEND;TZID={TZID}:{_local(end)}\r\n",
    ]
    if rrule:
        lines.append(f"RRULE:{rrule}\r\n")
    if recurrence_id is not None:
        lines.append(f"RECURRENCE-ID;TZID={TZID}:{_local(recurrence_id)}\r\n")
    lines += [
        f"DTSTAMP:{_stamp(stamp)}\r\n",
        _fold(f"ORGANIZER;CN={organiser.split('@', maxsplit=1)[0].title()}:mailto:{organiser}"),
        f"UID:{uid}\r\n",
        _attendee_lines(organiser, attendees),
        f"CREATED:{_stamp(stamp - timedelta(days=1))}\r\n",
    ]
    if description:
        lines.append(_fold(f"DESCRIPTION:{_DESCRIPTION}"))
    lines += [
        f"LAST-MODIFIED:{_stamp(stamp)}\r\n",
        _fold("LOCATION:Room 4.12 / https://meet.example/abc-defg-hij"),
        f"SEQUENCE:{sequence}\r\n",
        "STATUS:CONFIRMED\r\n",
        _fold(f"SUMMARY:{title}"),
        "TRANSP:OPAQUE\r\n",
        "END:VEVENT\r\n",
    ]
    return "".join(lines)


def _calendar(method: str, body: str, prodid: str) -> str:
    return (
        "BEGIN:VCALENDAR\r\n"
        f"PRODID:{prodid}\r\n"
        "VERSION:2.0\r\n"
        "CALSCALE:GREGORIAN\r\n"
        f"METHOD:{method}\r\n" + VTIMEZONE + body + "END:VCALENDAR\r\n"
    )


def _event_calendar(
    method: str,
    *,
    uid: str,
    organiser: str,
    attendees: list[tuple[str, str]],
    start: datetime,
    stamp: datetime,
    title: str,
    overrides: int,
    prodid: str,
) -> str:
    if overrides <= 0:
        body = _vevent(
            uid=uid,
            organiser=organiser,
            attendees=attendees,
            start=start,
            stamp=stamp,
            title=title,
        )
        return _calendar(method, body, prodid)
    # A weekly series with `overrides` moved instances (each an own VEVENT with
    # RECURRENCE-ID, RFC 5545 section 3.8.4.4), as Outlook sends after edits.
    parts = [
        _vevent(
            uid=uid,
            organiser=organiser,
            attendees=attendees,
            start=start,
            stamp=stamp,
            title=title,
            rrule="FREQ=WEEKLY;COUNT=52;BYDAY="
            + ("MO", "TU", "WE", "TH", "FR", "SA", "SU")[start.weekday()],
        )
    ]
    for k in range(1, overrides + 1):
        original = start + timedelta(weeks=k)
        parts.append(
            _vevent(
                uid=uid,
                organiser=organiser,
                attendees=attendees,
                start=original + timedelta(hours=2),
                stamp=stamp,
                title=f"{title} (moved)",
                recurrence_id=original,
                description=False,
            )
        )
    return _calendar(method, "".join(parts), prodid)


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii").replace("\n", "\r\n")


def _qp(text: str) -> str:
    # quopri works on LF lines; callers may pass CRLF text (the summaries are CRLF):
    # normalise first so the result has CRLF line ends, never "\r\r\n".
    lf = text.replace("\r\n", "\n")
    return quopri.encodestring(lf.encode("utf-8")).decode("ascii").replace("\n", "\r\n")


def _date_header(now: datetime) -> str:
    return now.strftime("%a, %d %b %Y %H:%M:%S +0000")


def _plain_summary(title: str, start: datetime, organiser: str, n: int) -> str:
    return (
        f"{title}\n\nWhen: {start:%A, %d %B %Y %H:%M}-{start + timedelta(minutes=45):%H:%M}"
        f" ({TZID})\nWhere: Room 4.12 / https://meet.example/abc-defg-hij\n"
        f"Organizer: {organiser}\nAttendees: {n} people\n\n"
        "Hi all,\n\nlet's use this slot to go through the open items from last week, agree"
        " on owners and dates, and look at the risks for the next milestone. Please add"
        " topics to the shared agenda beforehand.\n\nJoin online:"
        " https://meet.example/abc-defg-hij\nDial-in: +49 30 1234567 PIN 9876#\n\n"
        "Invitation from a calendar client. You are receiving this email because you are"
        " an attendee of the event.\n"
    ).replace("\n", "\r\n")


def _outlook_mail(
    *,
    sender: str,
    to: str,
    subject: str,
    message_id: str,
    now: datetime,
    method: str,
    calendar: str,
    plain: str,
    serial: int,
) -> bytes:
    boundary = f"_000_{serial:08x}EXCHANGEbenchexample_"
    thread_index = base64.b64encode(serial.to_bytes(22, "big")).decode()
    head = (
        f"Received: from EX-MBX-{serial % 7:02d}.corp.example (10.1.2.{serial % 250}) by"
        f" EX-HUB-01.corp.example (10.1.2.1) with Microsoft SMTP Server id 15.2.1118.40;"
        f" {_date_header(now)}\r\n"
        f"Received: from mail.corp.example (mail.corp.example [192.0.2.{serial % 250}])\r\n"
        f"\tby mx.{BENCH_DOMAIN} (Postfix) with ESMTPS id 4Xb{serial:07X}\r\n"
        f"\tfor <{to}>; {_date_header(now)}\r\n"
        f"From: {sender.split('@', maxsplit=1)[0].title()} <{sender}>\r\n"
        f"To: {to.split('@', maxsplit=1)[0].title()} <{to}>\r\n"
        f"Subject: {subject}\r\n"
        f"Thread-Topic: {subject.split(': ', 1)[-1]}\r\n"
        f"Thread-Index: {thread_index}\r\n"
        f"Date: {_date_header(now)}\r\n"
        f"Message-ID: {message_id}\r\n"
        "Accept-Language: en-US, de-DE\r\n"
        "Content-Language: en-US\r\n"
        "X-MS-Has-Attach:\r\n"
        "X-MS-Exchange-Organization-SCL: -1\r\n"
        "X-MS-TNEF-Correlator:\r\n"
        "x-ms-exchange-transport-fromentityheader: Hosted\r\n"
        "x-originating-ip: [10.20.30.40]\r\n"
        f'Content-Type: multipart/alternative;\r\n\tboundary="{boundary}"\r\n'
        "MIME-Version: 1.0\r\n"
        "\r\n"
    )
    body = (
        f"--{boundary}\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        f"{_qp(plain)}\r\n"
        f"--{boundary}\r\n"
        f'Content-Type: text/calendar; charset="utf-8"; method={method}\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{_b64(calendar.encode('utf-8'))}\r\n"
        f"--{boundary}--\r\n"
    )
    return (head + body).encode("utf-8")


def _google_mail(
    *,
    sender: str,
    to: str,
    subject: str,
    message_id: str,
    now: datetime,
    method: str,
    calendar: str,
    plain: str,
    serial: int,
) -> bytes:
    outer = f"000000000000{serial:012x}a0"
    inner = f"000000000000{serial:012x}9e"
    html = (
        '<div dir="ltr"><p>' + plain.replace("\r\n\r\n", "</p><p>").replace("\r\n", "<br>")
    ) + "</p></div>\r\n"
    head = (
        f"Received: by mail-wr1-f{serial % 90}.google.com with SMTP id"
        f" {serial:x}so1234567wrb.1\r\n        for <{to}>; {_date_header(now)}\r\n"
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=remote.example;"
        " s=20230601; t=1700000000; x=1700604800; darn=bench.example;\r\n"
        "        h=to:subject:message-id:date:from:reply-to:mime-version:from:to:cc\r\n"
        "         :subject:date:message-id:reply-to;\r\n"
        "        bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
        "        b=Xq9yJ2tC0o4bZf1wWQ2l3kD3nq0a8bY3h4p5K6mN7oP8qR9sT0uV1wX2yZ3aB4cD5eF6\r\n"
        "         gH7iJ8kL9mN0oP1qR2sT3uV4wX5yZ6aB7cD8eF9gH0iJ1kL2mN3oP4qR5sT6uV7wX8y==\r\n"
        "X-Google-Smtp-Source: AGHT+IF0bench0000000000000000000000000000000000000==\r\n"
        f"X-Received: by 2002:a05:6000:1a8e:b0:33d:{serial % 9999:x} with SMTP id;"
        f" {_date_header(now)}\r\n"
        "MIME-Version: 1.0\r\n"
        f"Reply-To: {sender}\r\n"
        f"Sender: Google Calendar <calendar-notification@google.com>\r\n"
        f"Message-ID: {message_id}\r\n"
        f"Date: {_date_header(now)}\r\n"
        f"Subject: {subject}\r\n"
        f"From: {sender.split('@', maxsplit=1)[0].title()} <{sender}>\r\n"
        f"To: {to}\r\n"
        f'Content-Type: multipart/mixed; boundary="{outer}"\r\n'
        "\r\n"
    )
    body = (
        f"--{outer}\r\n"
        f'Content-Type: multipart/alternative; boundary="{inner}"\r\n\r\n'
        f"--{inner}\r\n"
        'Content-Type: text/plain; charset="UTF-8"; format=flowed; delsp=yes\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        f"{plain}\r\n"
        f"--{inner}\r\n"
        'Content-Type: text/html; charset="UTF-8"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        f"{html}\r\n"
        f"--{inner}\r\n"
        f'Content-Type: text/calendar; charset="UTF-8"; method={method}\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        f"{calendar}\r\n"
        f"--{inner}--\r\n\r\n"
        f"--{outer}\r\n"
        'Content-Type: application/ics; name="invite.ics"\r\n'
        'Content-Disposition: attachment; filename="invite.ics"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
        f"{_b64(calendar.encode('utf-8'))}\r\n"
        f"--{outer}--\r\n"
    )
    return (head + body).encode("utf-8")


def _mail(style: str, **kw: object) -> bytes:
    if style == "google":
        return _google_mail(**kw)  # type: ignore[arg-type]
    return _outlook_mail(**kw)  # type: ignore[arg-type]


def request_mail(
    *,
    serial: int,
    run_id: str,
    spec: EventSpec,
    now: datetime,
    organiser: str | None = None,
    to: str = RESPONDER,
    style: str | None = None,
) -> BenchMessage:
    """An invitation from a remote organiser to the local attendee ``to``.

    ``to`` is one of ``spec.attendees`` attendees (the others are remote).  Google-style
    mail is sent by the organiser itself here (not via calendar-notification@), so the
    default identity rule (From = ORGANIZER) holds without configuring relays.
    """
    organiser = organiser or f"org{serial % 997}@{_DOMAINS[serial % len(_DOMAINS)]}"
    style = style or ("outlook" if serial % 2 else "google")
    uid = f"{run_id}-req-{serial}@{organiser.split('@', 1)[1]}"
    message_id = f"<{run_id}.req.{serial}@{organiser.split('@', 1)[1]}>"
    start = datetime(2027, 3, 1, 9, 0) + timedelta(days=serial % 200, minutes=30 * (serial % 16))
    attendees = [(to, "NEEDS-ACTION")] + [
        (attendee_address(serial * 7 + i), "NEEDS-ACTION") for i in range(1, spec.attendees)
    ]
    attendees.insert(0, (organiser, "ACCEPTED"))
    title = _TITLES[serial % len(_TITLES)]
    calendar = _event_calendar(
        "REQUEST",
        uid=uid,
        organiser=organiser,
        attendees=attendees,
        start=start,
        stamp=now,
        title=title,
        overrides=spec.overrides,
        prodid="-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN"
        if style == "outlook"
        else "-//Google Inc//Google Calendar 70.9054//EN",
    )
    data = _mail(
        style,
        sender=organiser,
        to=to,
        subject=f"Invitation: {title} @ {start:%a %d %b %Y %H:%M} ({to})",
        message_id=message_id,
        now=now,
        method="REQUEST",
        calendar=calendar,
        plain=_plain_summary(title, start, organiser, spec.attendees),
        serial=serial,
    )
    return BenchMessage(
        mail_from=organiser,
        rcpt_to=to,
        message_id=message_id,
        data=data,
        kind="request",
        attendees=spec.attendees,
        overrides=spec.overrides,
        uid=uid,
    )


def organiser_event_uid(run_id: str, spec: EventSpec, index: int) -> str:
    return f"{run_id}-org-{spec.label}-{index}@{BENCH_DOMAIN}"


def organiser_event_start(index: int) -> datetime:
    return datetime(2027, 5, 3, 8, 0) + timedelta(days=index % 300, minutes=15 * (index % 32))


def organiser_event_attendees(spec: EventSpec, index: int) -> list[str]:
    """The remote attendees of the local organiser's ``index``-th event of ``spec``."""
    return [attendee_address(index * 13 + i) for i in range(spec.attendees)]


def organiser_event_ics(
    *, run_id: str, spec: EventSpec, index: int, now: datetime, organiser: str = ORGANISER
) -> bytes:
    """The organiser's own event, as ``imip-gateway send FILE.ics`` takes it."""
    attendees = [(organiser, "ACCEPTED")] + [
        (a, "NEEDS-ACTION") for a in organiser_event_attendees(spec, index)
    ]
    calendar = _event_calendar(
        "REQUEST",
        uid=organiser_event_uid(run_id, spec, index),
        organiser=organiser,
        attendees=attendees,
        start=organiser_event_start(index),
        stamp=now,
        title=_TITLES[index % len(_TITLES)],
        overrides=spec.overrides,
        prodid="-//imip-gateway//bench//EN",
    )
    return calendar.encode("utf-8")


def reply_mail(
    *,
    serial: int,
    run_id: str,
    spec: EventSpec,
    event_index: int,
    attendee_index: int,
    now: datetime,
    organiser: str = ORGANISER,
    instance: int = 0,
) -> BenchMessage:
    """Attendee ``attendee_index`` of the organiser's event answers (RFC 5546 3.2.3).

    ``instance > 0`` answers one occurrence of a recurring event (RECURRENCE-ID of the
    ``instance``-th week, which is one of the stored overrides when ``instance`` <=
    ``spec.overrides``).
    """
    attendee = organiser_event_attendees(spec, event_index)[attendee_index]
    domain = attendee.split("@", 1)[1]
    style = "outlook" if serial % 2 else "google"
    partstat = ("ACCEPTED", "ACCEPTED", "TENTATIVE", "DECLINED")[serial % 4]
    uid = organiser_event_uid(run_id, spec, event_index)
    start = organiser_event_start(event_index)
    title = _TITLES[event_index % len(_TITLES)]
    recurrence_id = None
    event_start = start
    if instance > 0:
        recurrence_id = start + timedelta(weeks=instance)
        event_start = recurrence_id + (
            timedelta(hours=2) if instance <= spec.overrides else timedelta()
        )
    body = _vevent(
        uid=uid,
        organiser=organiser,
        attendees=[(attendee, partstat)],
        start=event_start,
        stamp=now + timedelta(seconds=serial % 3600),
        title=title,
        rrule=""
        if instance > 0 or spec.overrides <= 0
        else "FREQ=WEEKLY;COUNT=52;BYDAY="
        + ("MO", "TU", "WE", "TH", "FR", "SA", "SU")[start.weekday()],
        recurrence_id=recurrence_id,
        description=False,
    )
    calendar = _calendar(
        "REPLY",
        body,
        "-//Microsoft Corporation//Outlook 16.0 MIMEDIR//EN"
        if style == "outlook"
        else "-//Google Inc//Google Calendar 70.9054//EN",
    )
    word = {"ACCEPTED": "Accepted", "TENTATIVE": "Tentative", "DECLINED": "Declined"}[partstat]
    message_id = f"<{run_id}.rep.{serial}@{domain}>"
    data = _mail(
        style,
        sender=attendee,
        to=organiser,
        subject=f"{word}: {title}",
        message_id=message_id,
        now=now,
        method="REPLY",
        calendar=calendar,
        plain=f"{attendee} has {word.lower()} this invitation.\r\n",
        serial=serial,
    )
    return BenchMessage(
        mail_from=attendee,
        rcpt_to=organiser,
        message_id=message_id,
        data=data,
        kind="reply",
        attendees=spec.attendees,
        overrides=spec.overrides,
        uid=uid,
        attendee=attendee,
        partstat=partstat,
        instance=instance,
    )


#: The default invitation mix: mostly small meetings, some large ones, some series.
REQUEST_MIX: tuple[tuple[EventSpec, int], ...] = (
    (EventSpec(5), 60),
    (EventSpec(50), 20),
    (EventSpec(200), 5),
    (EventSpec(5, overrides=10), 15),
)


def request_workload(
    n: int, *, run_id: str, now: datetime, mix: tuple[tuple[EventSpec, int], ...] = REQUEST_MIX
) -> list[BenchMessage]:
    """``n`` invitations to the local attendee following ``mix`` (weights in percent)."""
    rng = random.Random(n)
    specs = [spec for spec, weight in mix for _ in range(weight)]
    return [
        request_mail(serial=i, run_id=run_id, spec=rng.choice(specs), now=now)
        for i in range(1, n + 1)
    ]


def now_utc() -> datetime:
    """The one clock read of the generator's callers (kept here for symmetry)."""
    return datetime.now(UTC).replace(microsecond=0)


#: The default REPLY mix: answers to the organiser's small, large and recurring events.
REPLY_MIX: tuple[tuple[EventSpec, int], ...] = (
    (EventSpec(5), 60),
    (EventSpec(50), 20),
    (EventSpec(200), 5),
    (EventSpec(5, overrides=10), 15),
)


def reply_workload(
    n: int, *, run_id: str, now: datetime, mix: tuple[tuple[EventSpec, int], ...] = REPLY_MIX
) -> tuple[list[BenchMessage], dict[EventSpec, int]]:
    """``n`` attendee replies to the organiser's events, and the events they need.

    Each (event, attendee) pair answers once, so every reply is new information that
    must be applied (none is stale or a duplicate).  Consecutive replies go to
    different events (attendee-major order), as replies to one invitation trickle in
    over time; answers to recurring events alternate between the series and one of
    its overridden instances.  Returns the messages and, per spec, how many events
    (indices ``0..k-1`` of ``run_id``) must be stored first.
    """
    rng = random.Random(n + 1)
    specs = [spec for spec, weight in mix for _ in range(weight)]
    chosen = [rng.choice(specs) for _ in range(n)]
    per_spec: dict[EventSpec, int] = {}
    for spec in chosen:
        per_spec[spec] = per_spec.get(spec, 0) + 1
    events = {spec: -(-count // spec.attendees) for spec, count in per_spec.items()}
    slot: dict[EventSpec, int] = dict.fromkeys(per_spec, 0)
    out: list[BenchMessage] = []
    for serial, spec in enumerate(chosen, start=1):
        k = slot[spec]
        slot[spec] += 1
        event_index, attendee_index = k % events[spec], k // events[spec]
        instance = 0
        if spec.overrides and k % 2:
            instance = 1 + (k // 2) % spec.overrides
        out.append(
            reply_mail(
                serial=serial,
                run_id=run_id,
                spec=spec,
                event_index=event_index,
                attendee_index=attendee_index,
                now=now,
                instance=instance,
            )
        )
    return out, events
