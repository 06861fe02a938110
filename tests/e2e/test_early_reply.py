"""A REPLY that arrives before the organiser copy is held, then applied (issue 3:
"the first REPLY for an unknown UID to a local organiser is held (not dropped) until
the copy is known"; RFC 5546 section 5.2.1).

bob answers an invitation alice's own client sent directly (the gateway never saw it);
later alice submits the event with ``imip-gateway send`` and the held answer applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import User, future, ical_time, now_stamp, smtp_send, wait_until
from tests.services.helpers import imip_mail, vevent

ALICE = "alice@example.org"
BOB = "bob@remote.test"


def test_reply_before_the_organiser_copy_is_held_then_applied_when_it_is_submitted(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory("gw", [User(ALICE, "manual")], relay_port=relay.port)
    assert gw.smtp_port is not None
    uid = "early-1@example.org"
    start, end = ical_time(future(15)), ical_time(future(15, hour=11))
    reply = vevent(
        uid=uid,
        method="REPLY",
        start=start,
        end=end,
        attendees=((BOB, "ACCEPTED"),),
        dtstamp=now_stamp(),
    )
    mail = imip_mail(reply, sender=BOB, to=ALICE, method="REPLY", message_id="<early-1@x>")
    assert smtp_send(gw.smtp_port, mail, mail_from=BOB, rcpt_tos=[ALICE]) == {}
    wait_until(lambda: gw.reader.all_processed(1), "the early REPLY")
    journal = gw.call("messages", "list")
    outcome = gw.call("messages", "show", str(journal[0]["id"]))["outcomes"][0]
    assert outcome["outcome"] == "held-pending", outcome

    invite = vevent(
        uid=uid, start=start, end=end, attendees=((BOB, "NEEDS-ACTION"),), dtstamp=now_stamp()
    )
    path = tmp_path / "invite.ics"
    path.write_text(invite, encoding="utf-8")
    gw.cli_json("send", str(path))

    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    bob = next(a for a in copy["instances"][0]["attendees"] if a["address"] == BOB)
    assert bob["partstat"] == "ACCEPTED"
    assert bob["reply_sequence"] == 0
    assert not [h for h in copy["held"] if h["kind"] != "counter"], copy["held"]
