"""An organiser and an attendee on the same gateway (issue 3: "local attendees are
addressed like any other (the service delivers locally)").

alice (manual) invites carol (accept) on the same gateway and bob on another domain.
The MX routes example.org back to this gateway, as a real MX would if the gateway
sent carol's invitation out: either way carol must get exactly one copy, accept it
once, and alice must see carol's answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import (
    User,
    free_port,
    future,
    ical_time,
    now_stamp,
    smtp_send,
    wait_until,
)
from tests.services.helpers import imip_mail, vevent

ALICE = "alice@example.org"
CAROL = "carol@example.org"
BOB = "bob@example.net"


def test_invitation_to_a_local_attendee_is_accepted_once_and_the_answer_reaches_the_organiser(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    mx_port = free_port()
    gw = gateway_factory(
        "gw",
        [User(ALICE, "manual"), User(CAROL, "accept")],
        relay_port=mx_port,
        relay={"retry_initial_seconds": 0.5, "retry_max_seconds": 1},
        start=False,
    )
    assert gw.smtp_port is not None
    sink = relay_factory()  # example.net goes nowhere further: a plain sink
    sink.start()
    mx = relay_factory(mx_port, {"example.org": gw.smtp_port, "example.net": sink.port})
    mx.start()
    gw.daemon.start()
    uid = "local-1@example.org"
    ics = vevent(
        uid=uid,
        start=ical_time(future(12)),
        end=ical_time(future(12, hour=11)),
        attendees=((CAROL, "NEEDS-ACTION"), (BOB, "NEEDS-ACTION")),
        dtstamp=now_stamp(),
    )
    path = tmp_path / "invite.ics"
    path.write_text(ics, encoding="utf-8")
    gw.cli_json("send", str(path))

    def carol_answered() -> Any:
        copy = gw.reader.events(uid, ALICE)
        atts = {a["address"]: a for a in copy[0]["instances"][0]["attendees"]} if copy else {}
        return atts.get(CAROL, {}).get("partstat") == "ACCEPTED"

    def quiet() -> bool:
        # Nothing left to do: every journal row processed, every outbox row final.
        # From here on the state cannot change by itself.
        outbox = gw.reader.outbox()
        return (
            bool(outbox)
            and all(r["status"] in ("sent", "failed") for r in outbox)
            and gw.reader.all_processed()
        )

    wait_until(quiet, "the gateway to finish every message")
    wait_until(quiet, "the gateway to finish every message (after a poll)")
    assert carol_answered(), gw.call("events", "show", uid)
    copies = {c["owner"]: c for c in gw.call("events", "show", uid)}
    assert set(copies) == {ALICE, CAROL}
    assert copies[CAROL]["role"] == "attendee"
    carol = next(a for a in copies[CAROL]["instances"][0]["attendees"] if a["address"] == CAROL)
    assert carol["partstat"] == "ACCEPTED"
    # Bob's invitation went out; carol's REQUEST and REPLY were handled once each.
    wait_until(lambda: sink.delivered(to=BOB, method="REQUEST"), "bob's REQUEST")
    assert len(mx.delivered(to=ALICE, method="REPLY")) <= 1


def test_relayed_client_invitation_to_a_local_and_a_remote_attendee(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    """Outbound relay mode with one local recipient: carol is an attendee here.

    The gateway records alice's organiser copy, forwards the mail to bob, and acts for
    carol (policy accept) as it would for a delivery; carol's answer must reach
    alice's copy.
    """
    mx_port = free_port()
    gw = gateway_factory(
        "gw",
        [User(ALICE, "manual"), User(CAROL, "accept")],
        relay_port=mx_port,
        relay={"retry_initial_seconds": 0.5, "retry_max_seconds": 1},
        smtp_listener={"relay_mode": True, "relay_trusted_networks": ["127.0.0.0/8"]},
        start=False,
    )
    assert gw.smtp_port is not None
    sink = relay_factory().start()
    mx = relay_factory(mx_port, {"example.org": gw.smtp_port, "example.net": sink.port})
    mx.start()
    gw.daemon.start()
    uid = "local-relayed-1@example.org"
    cal = vevent(
        uid=uid,
        start=ical_time(future(13)),
        end=ical_time(future(13, hour=11)),
        attendees=((CAROL, "NEEDS-ACTION"), (BOB, "NEEDS-ACTION")),
        dtstamp=now_stamp(),
    )
    mail = imip_mail(cal, sender=ALICE, to=f"{CAROL}, {BOB}", message_id="<cl-2@example.org>")
    assert smtp_send(gw.smtp_port, mail, mail_from=ALICE, rcpt_tos=[CAROL, BOB]) == {}

    def quiet() -> bool:
        outbox = gw.reader.outbox()
        return all(r["status"] in ("sent", "failed") for r in outbox) and gw.reader.all_processed()

    wait_until(lambda: sink.delivered(to=BOB), "the forward to bob")
    wait_until(quiet, "the gateway to finish every message")
    # The relayed mail is one journal row; carol's answer to alice is a second, local one.
    journal = [m for m in gw.call("messages", "list") if m["source"] != "local"]
    assert len(journal) == 1
    outcomes = gw.call("messages", "show", str(journal[0]["id"]))["outcomes"]
    assert CAROL in {o["recipient"] for o in outcomes}, outcomes  # one outcome per recipient
    copies = {c["owner"]: c for c in gw.call("events", "show", uid)}
    assert set(copies) == {ALICE, CAROL}
    atts = {a["address"]: a for a in copies[ALICE]["instances"][0]["attendees"]}
    assert atts[CAROL]["partstat"] == "ACCEPTED"
    assert atts[BOB]["partstat"] == "NEEDS-ACTION"
    assert len(sink.delivered(to=BOB)) == 1
