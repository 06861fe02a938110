"""LMTP delivery to the real daemon (RFC 2033): one answer per recipient, one outcome each.

Postfix hands mailbox deliveries over LMTP (``mailbox_transport = lmtp:...``); with two
local recipients in one transaction the server must answer the final dot once per
accepted recipient (RFC 2033 section 4.2), and the gateway must act for each of them.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import (
    User,
    future,
    ical_time,
    lmtp_transaction,
    now_stamp,
    wait_until,
)
from tests.services.helpers import imip_mail, vevent

ORGANISER = "olga@remote.test"
BOB = "bob@example.net"
CAROL = "carol@example.net"
STRANGER = "nobody@example.net"


def test_lmtp_invitation_to_two_local_users_gets_one_250_and_one_outcome_each(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory(
        "gw",
        [User(BOB, "accept"), User(CAROL, "accept")],
        relay_port=relay.port,
        smtp=False,
        lmtp=True,
    )
    assert gw.lmtp_port is not None
    uid = "lmtp-1@remote.test"
    cal = vevent(
        uid=uid,
        organizer=ORGANISER,
        start=ical_time(future(8)),
        end=ical_time(future(8, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"), (CAROL, "NEEDS-ACTION")),
        dtstamp=now_stamp(),
    )
    mail = imip_mail(cal, sender=ORGANISER, to=f"{BOB}, {CAROL}", message_id="<lmtp-1@remote.test>")

    rcpt_replies, data_replies = lmtp_transaction(
        gw.lmtp_port, ORGANISER, [BOB, STRANGER, CAROL], mail
    )

    assert [r[:3] for r in rcpt_replies] == ["250", "550", "250"]
    assert "5.1.1" in rcpt_replies[1]
    assert len(data_replies) == 2  # one per accepted recipient, in RCPT order
    assert all(r.startswith("250") for r in data_replies), data_replies

    wait_until(lambda: gw.reader.all_processed(1), "the message to be processed")
    journal = gw.cli_json("messages", "list")
    assert len(journal) == 1
    assert sorted(journal[0]["envelope_to"]) == [BOB, CAROL]
    assert journal[0]["status"] == "done"
    outcomes = gw.call("messages", "show", str(journal[0]["id"]))["outcomes"]
    assert sorted((o["recipient"], o["outcome"]) for o in outcomes) == [
        (BOB, "applied"),
        (CAROL, "applied"),
    ]

    wait_until(lambda: len(relay.delivered(to=ORGANISER, method="REPLY")) == 2, "two REPLYs")
    copies = {c["owner"]: c for c in gw.call("events", "show", uid)}
    assert set(copies) == {BOB, CAROL}
    for owner, copy in copies.items():
        own = next(a for a in copy["instances"][0]["attendees"] if a["address"] == owner)
        assert own["partstat"] == "ACCEPTED"
