"""Two gateways talking iMIP through real SMTP on loopback (issue 4, "Tests with real
components"; semantics of issue 3 / RFC 5546).

Gateway A serves the organiser domain example.org (alice, policy manual); gateway B the
attendee domain example.net (bob, policy accept; room, a room with accept-if-free).
Both are ``imip-gateway serve`` subprocesses with their own SQLite file.  Their relay is
one tiny MX router (an aiosmtpd server in this process) that forwards every recipient's
copy to A or B by domain and records what it saw.

The main scenario is one test, in the order a real event lives: invitation,
automatic acceptance, replies aggregated at the organiser, a significant update
(SEQUENCE bumped, PARTSTAT reset and accepted again), an insignificant one, a recurring
event in a time zone with one instance cancelled, a COUNTER declined, REFRESH from an
attendee and from a stranger.  Others: relay mode, a busy room and an accepted COUNTER,
an MX outage with an invitation and its update queued.  State is asserted through the
CLI with ``--json``; waiting polls the same read models.

Each gateway stamps its own installation marker (``X-IMIP-Gateway: <hostname>``) on
what it sends and ignores only mail carrying its own marker, so the MX forwards mail
unchanged and the two installations talk as two organisations would.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from email import message_from_bytes
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.support import (
    Relay,
    User,
    free_port,
    future,
    ical_time,
    now_stamp,
    smtp_send,
    unfolded,
    wait_until,
)
from tests.services.helpers import imip_mail, vevent

pytestmark = pytest.mark.slow

ALICE = "alice@example.org"
BOB = "bob@example.net"
ROOM = "room@example.net"
STRANGER = "mallory@example.net"  # in B's domain but not an attendee (and not local)
# Non-ASCII on purpose: composed, sent over SMTP, extracted and stored on the other side.
NEW_TITLE = "Quartalsplanung – Café ☕ (Agenda anbei)"


@dataclass
class World:
    a: Gateway
    b: Gateway
    mx: Relay
    tmp: Path


def make_world(gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path) -> World:
    mx_port = free_port()
    fast = {"retry_initial_seconds": 0.5, "retry_max_seconds": 2}
    # A also relays its organiser's own client mail (issue 3, organiser copies #2).
    relaying = {"relay_mode": True, "relay_trusted_networks": ["127.0.0.0/8"]}
    a = gateway_factory(
        "gw-a",
        [User(ALICE, "manual")],
        relay_port=mx_port,
        relay=fast,
        smtp_listener=relaying,
        start=False,
    )
    b = gateway_factory(
        "gw-b",
        [User(BOB, "accept"), User(ROOM, "accept-if-free", kind="room")],
        relay_port=mx_port,
        relay=fast,
        start=False,
    )
    assert a.smtp_port is not None
    assert b.smtp_port is not None
    mx = relay_factory(mx_port, {"example.org": a.smtp_port, "example.net": b.smtp_port})
    mx.start()
    a.daemon.start()
    b.daemon.start()
    return World(a, b, mx, tmp_path)


@pytest.fixture
def world(gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path) -> World:
    """A and B as they are deployed: the MX forwards mail unchanged."""
    return make_world(gateway_factory, relay_factory, tmp_path)


def write_ics(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_bytes(text.encode("utf-8"))
    return path


def attendee(detail: dict[str, Any], address: str, recurrence_id: str | None = None) -> Any:
    """One attendee row of one instance of ``events show --json`` output."""
    for inst in detail["instances"]:
        if inst["recurrence_id"] == recurrence_id:
            for att in inst["attendees"]:
                if att["address"] == address:
                    return att
    raise AssertionError(f"{address} not in instance {recurrence_id!r} of {detail['uid']}")


def partstat_of(gw: Gateway, uid: str, owner: str, address: str) -> str | None:
    events = gw.reader.events(uid, owner)
    if not events:
        return None
    try:
        return str(attendee(events[0], address)["partstat"])
    except AssertionError:
        return None


def reply_seq_of(gw: Gateway, uid: str, owner: str, address: str) -> int | None:
    events = gw.reader.events(uid, owner)
    if not events:
        return None
    try:
        value = attendee(events[0], address)["reply_sequence"]
    except AssertionError:
        return None
    return None if value is None else int(value)


def param_line(calendar: str, prop: str, address: str) -> str:
    for line in unfolded(calendar):
        if line.upper().startswith(prop) and address in line.lower():
            return line
    raise AssertionError(f"no {prop} line for {address} in\n{calendar}")


def test_invitation_from_one_gateway_is_auto_accepted_by_another(world: World) -> None:
    a, b, mx = world.a, world.b, world.mx
    uid = "e2e-plain-1@example.org"
    invite = vevent(
        uid=uid,
        start=ical_time(future(20)),
        end=ical_time(future(20, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"),),
        dtstamp=now_stamp(),
    )
    a.cli_json("send", str(write_ics(world.tmp, "invite.ics", invite)))
    wait_until(lambda: mx.delivered(to=BOB, method="REQUEST"), "the REQUEST to reach the MX")
    wait_until(b.reader.all_processed, "B to process the REQUEST")
    # B must act on it (auto-accept), not discard it as its own message.
    outcomes = [
        o
        for m in b.call("messages", "list")
        for o in b.call("messages", "show", str(m["id"]))["outcomes"]
    ]
    assert [o["outcome"] for o in outcomes] != ["ignored-loop"], outcomes
    wait_until(lambda: reply_seq_of(a, uid, ALICE, BOB) == 0, "A to apply bob's REPLY", 30)
    assert a.call("replies", uid, "--owner", ALICE)[0]["series"]["counts"]["ACCEPTED"] == 1


def test_invitation_update_recurrence_counter_and_refresh_between_two_gateways(
    world: World,
) -> None:
    a, b, mx = world.a, world.b, world.mx
    uid = "e2e-meeting-1@example.org"
    start, end = future(20), future(20, hour=11)

    # --- 1. invitation: alice submits on A; B auto-accepts for bob and the room --------
    invite = vevent(
        uid=uid,
        start=ical_time(start),
        end=ical_time(end),
        attendees=((BOB, "NEEDS-ACTION"), (ROOM, "NEEDS-ACTION")),
        summary="Quarterly planning",
        dtstamp=now_stamp(),
    )
    sent = a.cli_json("send", str(write_ics(world.tmp, "invite.ics", invite)))
    assert sent, "send printed no outcome"

    wait_until(
        lambda: reply_seq_of(a, uid, ALICE, BOB) == 0 and reply_seq_of(a, uid, ALICE, ROOM) == 0,
        "A to apply the REPLYs of bob and the room",
    )
    replies = a.cli_json("replies", uid, "--owner", ALICE)
    assert len(replies) == 1
    series = replies[0]["series"]
    states = {att["address"]: att["partstat"] for att in series["attendees"]}
    assert states == {BOB: "ACCEPTED", ROOM: "ACCEPTED"}
    assert series["counts"]["ACCEPTED"] == 2
    assert series["not_answered"] == []

    # B holds one copy per local attendee, each accepted.
    copies = {c["owner"]: c for c in b.call("events", "show", uid)}
    assert set(copies) == {BOB, ROOM}
    assert copies[BOB]["role"] == copies[ROOM]["role"] == "attendee"
    assert attendee(copies[BOB], BOB)["partstat"] == "ACCEPTED"
    assert attendee(copies[ROOM], ROOM)["partstat"] == "ACCEPTED"
    # The router saw the REQUEST to each attendee and a REPLY from each one.
    assert mx.delivered(to=BOB, method="REQUEST")
    assert mx.delivered(to=ROOM, method="REQUEST")
    assert len(mx.delivered(to=ALICE, method="REPLY", sender=BOB)) == 1
    assert len(mx.delivered(to=ALICE, method="REPLY", sender=ROOM)) == 1

    # --- 2. significant update: new time -> SEQUENCE 1, re-accepted automatically -------
    new_start, new_end = future(21), future(21, hour=11)
    update = vevent(
        uid=uid,
        start=ical_time(new_start),
        end=ical_time(new_end),
        attendees=((BOB, "ACCEPTED"), (ROOM, "ACCEPTED")),
        summary="Quarterly planning",
        dtstamp=now_stamp(),
    )
    a.call("send", str(write_ics(world.tmp, "update.ics", update)))
    wait_until(
        lambda: reply_seq_of(a, uid, ALICE, BOB) == 1 and reply_seq_of(a, uid, ALICE, ROOM) == 1,
        "A to apply the REPLYs to SEQUENCE 1",
    )
    organiser_copy = a.call("events", "show", uid, "--owner", ALICE)[0]
    assert organiser_copy["sequence"] == 1
    for who in (BOB, ROOM):
        row = attendee(organiser_copy, who)
        assert row["partstat"] == "ACCEPTED"
        assert row["reply_sequence"] == 1
    bob_copy = b.call("events", "show", uid, "--owner", BOB)[0]
    assert bob_copy["sequence"] == 1
    assert bob_copy["instances"][0]["start"].startswith(new_start.strftime("%Y-%m-%dT%H"))
    assert attendee(bob_copy, BOB)["partstat"] == "ACCEPTED"
    # The update reset bob's PARTSTAT (the REQUEST asks again, RSVP) and bob answered
    # again: a second REPLY, for SEQUENCE 1.
    requests = mx.delivered(to=BOB, method="REQUEST")
    assert "PARTSTAT=NEEDS-ACTION" in param_line(requests[-1].calendar, "ATTENDEE", BOB).upper()
    bob_replies = mx.delivered(to=ALICE, method="REPLY", sender=BOB)
    assert len(bob_replies) == 2
    assert "SEQUENCE:1" in unfolded(bob_replies[-1].calendar)
    assert "PARTSTAT=ACCEPTED" in param_line(bob_replies[-1].calendar, "ATTENDEE", BOB).upper()

    # --- 2b. insignificant update (SUMMARY only): SEQUENCE and bob's answer stay --------
    retitled = vevent(
        uid=uid,
        sequence=1,
        start=ical_time(new_start),
        end=ical_time(new_end),
        attendees=((BOB, "ACCEPTED"), (ROOM, "ACCEPTED")),
        summary=NEW_TITLE,
        dtstamp=now_stamp(),
    )
    a.call("send", str(write_ics(world.tmp, "retitle.ics", retitled)))

    # --- 3. recurring event in a time zone, one instance cancelled -------------------
    # (submitted right away: CLI submissions wait for the outbox worker's poll, and two
    # independent ones can share it)
    # Europe/Berlin with its VTIMEZONE; the CANCEL names the instance by a local-time
    # RECURRENCE-ID, which B must match by instant (RFC 5545 section 3.8.4.4).
    ruid = "e2e-daily-1@example.org"
    first_day = future(30).astimezone(BERLIN).date()
    r_start = datetime.combine(first_day, time(9, 0), BERLIN)
    third = r_start + timedelta(days=2)  # the third occurrence
    a.call("send", str(write_ics(world.tmp, "daily.ics", berlin_daily(ruid, r_start))))

    def bob_retitled() -> Any:
        copy = b.reader.events(uid, BOB)
        return copy and copy[0]["summary"] == NEW_TITLE

    wait_until(bob_retitled, "B to apply the new title")
    bob_copy = b.call("events", "show", uid, "--owner", BOB)[0]
    assert bob_copy["sequence"] == 1  # RFC 5546 section 2.1.4: not a significant change
    assert attendee(bob_copy, BOB)["partstat"] == "ACCEPTED"
    retitle_request = [
        m for m in mx.delivered(to=BOB, method="REQUEST") if f"UID:{uid}" in unfolded(m.calendar)
    ][-1]
    assert "SEQUENCE:1" in unfolded(retitle_request.calendar)
    # RFC 2047 in the header, UTF-8 in the calendar: the title survives both ways.
    subject = message_from_bytes(retitle_request.data, policy=email.policy.default)["Subject"]
    assert NEW_TITLE in str(subject)

    # --- 3 (continued): the series was answered; cancel one instance -------------
    wait_until(lambda: reply_seq_of(a, ruid, ALICE, BOB) == 0, "bob's REPLY to the series")
    cancel_ics = berlin_daily(ruid, r_start, cancel_instance=third)
    a.call("send", str(write_ics(world.tmp, "cancel-one.ics", cancel_ics)))

    # --- 4. COUNTER from bob, declined by alice -------------------------------------
    counter = vevent(
        uid=uid,
        method="COUNTER",
        sequence=1,
        start=ical_time(future(22)),
        end=ical_time(future(22, hour=11)),
        attendees=((BOB, "ACCEPTED"), (ROOM, "ACCEPTED")),
        summary="Quarterly planning",
        extra="COMMENT:Thursday suits me better",
        dtstamp=now_stamp(),
    )
    counter_mail = imip_mail(
        counter, sender=BOB, to=ALICE, method="COUNTER", message_id="<counter-1@example.net>"
    )
    assert a.smtp_port is not None
    assert smtp_send(a.smtp_port, counter_mail, mail_from=BOB, rcpt_tos=[ALICE]) == {}

    def pending_counter() -> Any:
        copy = a.reader.events(uid, ALICE)
        return copy and [h for h in copy[0]["held"] if h["kind"] == "counter"]

    wait_until(pending_counter, "A to hold bob's COUNTER")
    shown = a.call("events", "show", uid, "--owner", ALICE)[0]
    counters = [h for h in shown["held"] if h["kind"] == "counter"]
    assert len(counters) == 1
    assert counters[0]["sender"] == BOB
    a.cli("counter", "decline", uid, "--owner", ALICE, "--comment", "Tuesday stays")

    def bob_instance_cancelled() -> Any:
        copy = b.reader.events(ruid, BOB)
        if not copy:
            return None
        hit = [i for i in copy[0]["instances"] if i["recurrence_id"] and i["cancelled"]]
        return hit or None

    wait_until(bob_instance_cancelled, "B to cancel the third instance in bob's copy")
    daily = b.call("events", "show", ruid, "--owner", BOB)[0]
    cancelled = [i for i in daily["instances"] if i["cancelled"]]
    assert len(cancelled) == 1, daily["instances"]
    assert datetime.fromisoformat(cancelled[0]["start"]) == third
    master = next(i for i in daily["instances"] if i["recurrence_id"] is None)
    assert not master["cancelled"]
    assert datetime.fromisoformat(master["start"]) == r_start
    assert daily["status"] != "CANCELLED"
    assert attendee(daily, BOB)["partstat"] == "ACCEPTED"
    cancels = mx.delivered(to=BOB, method="CANCEL")
    assert len(cancels) == 1
    assert any(line.startswith("RECURRENCE-ID") for line in unfolded(cancels[0].calendar))
    # The organiser's copy agrees: one cancelled instance, the series goes on.
    organiser_daily = a.call("events", "show", ruid, "--owner", ALICE)[0]
    assert [
        datetime.fromisoformat(i["start"]) for i in organiser_daily["instances"] if i["cancelled"]
    ] == [third]

    # --- 4 (continued): the DECLINECOUNTER reaches B ------------------------------
    wait_until(lambda: mx.delivered(to=BOB, method="DECLINECOUNTER"), "DECLINECOUNTER to bob")

    def b_declinecounter_row() -> Any:
        for m in b.reader.messages():
            detail = b.reader.message(m["id"]) or {}
            if m["status"] == "done" and any(
                o["method"] == "DECLINECOUNTER" for o in detail.get("outcomes", [])
            ):
                return m["id"]
        return None

    row_id = wait_until(b_declinecounter_row, "B to record the DECLINECOUNTER")
    dc = b.call("messages", "show", str(row_id))["outcomes"]
    assert len(dc) == 1
    assert dc[0]["method"] == "DECLINECOUNTER"
    assert dc[0]["recipient"] == BOB
    assert dc[0]["uid"] == uid
    assert dc[0]["outcome"] in ("applied", "recorded"), dc[0]
    # The counter is no longer pending at the organiser.
    shown = a.call("events", "show", uid, "--owner", ALICE)[0]
    assert not [h for h in shown["held"] if h["kind"] == "counter"]

    # --- 5. REFRESH: answered to an attendee, not to a stranger ---------------------
    requests_before = len(mx.delivered(to=BOB, method="REQUEST"))
    refresh = _refresh(uid, BOB)
    smtp_send(
        a.smtp_port,
        imip_mail(refresh, sender=BOB, to=ALICE, method="REFRESH", message_id="<refresh-1@x>"),
        mail_from=BOB,
        rcpt_tos=[ALICE],
    )
    wait_until(
        lambda: len(mx.delivered(to=BOB, method="REQUEST")) > requests_before,
        "A to answer bob's REFRESH with the current REQUEST",
    )
    answer = mx.delivered(to=BOB, method="REQUEST")[-1]
    assert answer.rcpt_tos == (BOB,)
    lines = unfolded(answer.calendar)
    assert f"UID:{uid}" in lines
    assert "SEQUENCE:1" in lines

    stranger_refresh = _refresh(uid, STRANGER)
    smtp_send(
        a.smtp_port,
        imip_mail(
            stranger_refresh,
            sender=STRANGER,
            to=ALICE,
            method="REFRESH",
            message_id="<refresh-2@x>",
        ),
        mail_from=STRANGER,
        rcpt_tos=[ALICE],
    )

    def stranger_refresh_done() -> Any:
        return next(
            (
                m["id"]
                for m in a.reader.messages()
                if m["message_id"] == "<refresh-2@x>" and m["status"] == "done"
            ),
            None,
        )

    row_id = wait_until(stranger_refresh_done, "A to process the stranger's REFRESH")
    # Outbox rows are written in the processing transaction: none for the stranger.
    to_stranger = [r for r in a.call("outbox", "list") if r["recipient"] == STRANGER]
    assert to_stranger == []
    outcomes = a.call("messages", "show", str(row_id))["outcomes"]
    assert len(outcomes) == 1
    assert outcomes[0]["method"] == "REFRESH"
    assert outcomes[0]["outcome"] != "applied", outcomes[0]
    assert outcomes[0]["reason"], "a refused REFRESH must say why"


BERLIN = ZoneInfo("Europe/Berlin")
BERLIN_VTIMEZONE = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE"""


def berlin_daily(uid: str, start: datetime, cancel_instance: datetime | None = None) -> str:
    """A daily series of five in Europe/Berlin, or the CANCEL of one of its instances."""

    def local(when: datetime) -> str:
        return when.astimezone(BERLIN).strftime("%Y%m%dT%H%M%S")

    when = cancel_instance or start
    lines = [
        "BEGIN:VCALENDAR",
        "PRODID:-//test//e2e//EN",
        "VERSION:2.0",
        f"METHOD:{'CANCEL' if cancel_instance else 'REQUEST'}",
        *BERLIN_VTIMEZONE.splitlines(),
        "BEGIN:VEVENT",
        f"UID:{uid}",
        f"SEQUENCE:{1 if cancel_instance else 0}",
        f"DTSTAMP:{now_stamp()}",
        f"DTSTART;TZID=Europe/Berlin:{local(when)}",
        f"DTEND;TZID=Europe/Berlin:{local(when + timedelta(hours=1))}",
        "SUMMARY:Daily stand-up",
        f"ORGANIZER;CN=Alice:mailto:{ALICE}",
        f"ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:{BOB}",
    ]
    if cancel_instance:
        lines += [f"RECURRENCE-ID;TZID=Europe/Berlin:{local(when)}", "STATUS:CANCELLED"]
    else:
        lines.append("RRULE:FREQ=DAILY;COUNT=5")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"


def _refresh(uid: str, sender: str) -> str:
    """A REFRESH (RFC 5546 section 3.2.6): ORGANIZER, one ATTENDEE, UID, DTSTAMP."""
    return (
        "\r\n".join(
            [
                "BEGIN:VCALENDAR",
                "PRODID:-//test//e2e//EN",
                "VERSION:2.0",
                "METHOD:REFRESH",
                "BEGIN:VEVENT",
                f"UID:{uid}",
                f"DTSTAMP:{now_stamp()}",
                f"ORGANIZER:mailto:{ALICE}",
                f"ATTENDEE:mailto:{sender}",
                "END:VEVENT",
                "END:VCALENDAR",
            ]
        )
        + "\r\n"
    )


def test_organiser_client_mail_relayed_through_a_is_recorded_forwarded_and_answered(
    world: World,
) -> None:
    """Outbound relay mode: alice's own mail client sends the REQUEST through A.

    A records the organiser copy, forwards the message unchanged (RFC 6047: the iMIP
    message itself), B accepts for bob and the room, and the REPLYs are aggregated on
    the copy A recorded.
    """
    a, mx = world.a, world.mx
    uid = "e2e-relayed-1@example.org"
    cal = vevent(
        uid=uid,
        start=ical_time(future(40)),
        end=ical_time(future(40, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"), (ROOM, "NEEDS-ACTION")),
        summary="Relayed planning",
        dtstamp=now_stamp(),
    )
    mail = imip_mail(cal, sender=ALICE, to=f"{BOB}, {ROOM}", message_id="<client-1@example.org>")
    assert a.smtp_port is not None
    assert smtp_send(a.smtp_port, mail, mail_from=ALICE, rcpt_tos=[BOB, ROOM]) == {}

    wait_until(
        lambda: reply_seq_of(a, uid, ALICE, BOB) == 0 and reply_seq_of(a, uid, ALICE, ROOM) == 0,
        "A to apply the REPLYs to the relayed invitation",
    )
    copy = a.call("events", "show", uid, "--owner", ALICE)[0]
    assert copy["role"] == "organizer"
    assert {att["address"]: att["partstat"] for att in copy["instances"][0]["attendees"]} == {
        BOB: "ACCEPTED",
        ROOM: "ACCEPTED",
    }
    journal = a.call("messages", "list")
    relayed = [m for m in journal if m["message_id"] == "<client-1@example.org>"]
    assert len(relayed) == 1
    assert relayed[0]["source"] == "relay"
    # Forwarded unchanged: the MX got alice's bytes, not a re-composed message.
    forwarded = [m for m in mx.accepted if m.headers["Message-ID"] == "<client-1@example.org>"]
    assert forwarded
    assert {r for m in forwarded for r in m.rcpt_tos} == {BOB, ROOM}
    assert all(m.data == mail for m in forwarded)


def test_busy_room_declines_and_an_accepted_counter_reschedules_for_everyone(
    world: World,
) -> None:
    """accept-if-free declines a clash; ``counter accept`` sends the new time to all.

    RFC 5546 section 3.2.7: the organiser accepts a COUNTER by sending a REQUEST with
    the proposed change to every attendee (SEQUENCE bumped, section 2.1.4), who answer
    again.  Then the whole event is cancelled (section 3.2.5).
    """
    a, b, mx = world.a, world.b, world.mx
    slot, slot_end = future(50), future(50, hour=11)
    bookings = ("e2e-booking-1@example.org", "e2e-booking-2@example.org")
    # Both submitted at once: they leave in the same outbox round, so which one reaches
    # the room first is not fixed; the room must take exactly one of them.
    for uid in bookings:
        ics = vevent(
            uid=uid,
            start=ical_time(slot),
            end=ical_time(slot_end),
            attendees=((BOB, "NEEDS-ACTION"), (ROOM, "NEEDS-ACTION")),
            summary="e2e-first",
            dtstamp=now_stamp(),
        )
        a.call("send", str(write_ics(world.tmp, f"{uid}.ics", ics)))

    def all_answered() -> bool:
        return all(reply_seq_of(a, uid, ALICE, who) == 0 for uid in bookings for who in (BOB, ROOM))

    wait_until(all_answered, "bob's and the room's REPLYs to both bookings")
    room_answers: dict[str, str] = {}
    for uid in bookings:
        series = a.call("replies", uid, "--owner", ALICE)[0]["series"]
        answers = {x["address"]: x["partstat"] for x in series["attendees"]}
        assert answers[BOB] == "ACCEPTED"  # bob's policy accepts anything
        room_answers[uid] = answers[ROOM]
    assert sorted(room_answers.values()) == ["ACCEPTED", "DECLINED"], room_answers
    first = next(uid for uid, answer in room_answers.items() if answer == "ACCEPTED")

    # bob proposes another day for the first meeting; alice accepts the proposal.
    new_slot, new_end = future(51), future(51, hour=11)
    counter = vevent(
        uid=first,
        method="COUNTER",
        start=ical_time(new_slot),
        end=ical_time(new_end),
        attendees=((BOB, "ACCEPTED"), (ROOM, "ACCEPTED")),
        summary="e2e-first",
        dtstamp=now_stamp(),
    )
    assert a.smtp_port is not None
    smtp_send(
        a.smtp_port,
        imip_mail(counter, sender=BOB, to=ALICE, method="COUNTER", message_id="<c-2@x>"),
        mail_from=BOB,
        rcpt_tos=[ALICE],
    )
    wait_until(
        lambda: [h for h in a.reader.events(first, ALICE)[0]["held"] if h["kind"] == "counter"],
        "A to hold the COUNTER",
    )
    a.cli("counter", "accept", first, "--owner", ALICE)
    wait_until(
        lambda: (
            reply_seq_of(a, first, ALICE, BOB) == 1 and reply_seq_of(a, first, ALICE, ROOM) == 1
        ),
        "both attendees to answer the rescheduled REQUEST",
    )
    organiser = a.call("events", "show", first, "--owner", ALICE)[0]
    assert organiser["sequence"] == 1
    assert organiser["instances"][0]["start"].startswith(new_slot.strftime("%Y-%m-%dT%H"))
    assert attendee(organiser, BOB)["partstat"] == "ACCEPTED"
    assert attendee(organiser, ROOM)["partstat"] == "ACCEPTED"  # free on the new day
    assert not organiser["held"]
    room_copy = b.call("events", "show", first, "--owner", ROOM)[0]
    assert room_copy["sequence"] == 1
    assert room_copy["instances"][0]["start"].startswith(new_slot.strftime("%Y-%m-%dT%H"))

    # alice cancels the first meeting for everyone.
    cancel = vevent(
        uid=first,
        method="CANCEL",
        sequence=2,
        start=ical_time(new_slot),
        end=ical_time(new_end),
        attendees=((BOB, "ACCEPTED"), (ROOM, "ACCEPTED")),
        summary="e2e-first",
        extra="STATUS:CANCELLED",
        dtstamp=now_stamp(),
    )
    a.call("send", str(write_ics(world.tmp, "cancel-all.ics", cancel)))
    wait_until(
        lambda: (
            all(c["status"] == "CANCELLED" for c in b.reader.events(first))
            and len(b.reader.events(first)) == 2
        ),
        "B to cancel both copies",
    )
    copies = b.call("events", "show", first)
    assert {c["owner"]: c["status"] for c in copies} == {BOB: "CANCELLED", ROOM: "CANCELLED"}
    assert len(mx.delivered(to=BOB, method="CANCEL")) == 1
    assert len(mx.delivered(to=ROOM, method="CANCEL")) == 1
    # Nobody answers a CANCEL (RFC 5546 section 3.2.5 has no reply).
    assert len(mx.delivered(to=ALICE, method="REPLY")) == 6


def test_invitation_and_update_queued_during_an_mx_outage_end_in_the_latest_state(
    world: World,
) -> None:
    """Both SEQUENCE 0 and SEQUENCE 1 wait in A's outbox while the MX is down; once it
    is back they may reach B in either order.  B must end with the update (an older
    SEQUENCE never overwrites a newer one, RFC 5546 section 2.1.5) and A with bob's
    answer to SEQUENCE 1."""
    a, b, mx = world.a, world.b, world.mx
    uid = "e2e-outage-1@example.org"
    mx.stop()
    old_start, new_start = future(60), future(61)
    for name, start, partstat in (("v0", old_start, "NEEDS-ACTION"), ("v1", new_start, "ACCEPTED")):
        ics = vevent(
            uid=uid,
            start=ical_time(start),
            end=ical_time(start + timedelta(hours=1)),
            attendees=((BOB, partstat),),
            summary="Outage planning",
            dtstamp=now_stamp(),
        )
        a.call("send", str(write_ics(world.tmp, f"{name}.ics", ics)))

    def both_tried() -> bool:
        rows = [r for r in a.reader.outbox() if r["uid"] == uid]
        return len(rows) == 2 and all(r["attempts"] >= 1 for r in rows)

    wait_until(both_tried, "both REQUESTs to be tried against the dead MX")
    mx.start()

    wait_until(lambda: reply_seq_of(a, uid, ALICE, BOB) == 1, "bob's answer to SEQUENCE 1")
    bob_copy = b.call("events", "show", uid, "--owner", BOB)[0]
    assert bob_copy["sequence"] == 1
    assert datetime.fromisoformat(bob_copy["instances"][0]["start"]) == new_start
    assert attendee(bob_copy, BOB)["partstat"] == "ACCEPTED"
    organiser = a.call("events", "show", uid, "--owner", ALICE)[0]
    assert attendee(organiser, BOB)["partstat"] == "ACCEPTED"
    assert attendee(organiser, BOB)["reply_sequence"] == 1
    rows = [r for r in a.call("outbox", "list") if r["uid"] == uid]
    assert {r["status"] for r in rows} == {"sent"}
