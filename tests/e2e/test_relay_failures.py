"""The real daemon against a relay that fails (issue 4: durable outbox, retry, 5xx recorded).

alice (a local organiser) submits invitations with ``imip-gateway send``; the daemon's
outbox worker hands them to the relay, an aiosmtpd server on a fixed loopback port
whose replies are scripted:

* ``451`` then ``250``: the row is retried with backoff and delivered exactly once;
* ``550`` for one recipient: the row fails permanently and the attendee on alice's copy
  carries SCHEDULE-STATUS 5.x (RFC 6638 section 7.3 values, as issue 4 asks), while the
  other attendee's delivery is unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.support import Relay, User, future, ical_time, now_stamp, smtp_send, wait_until
from tests.services.helpers import imip_mail, vevent

pytestmark = pytest.mark.slow  # each waits for the outbox worker's 5 s poll

ALICE = "alice@example.org"
BOB = "bob@remote.test"
NOBODY = "nobody@remote.test"

FAST_RETRY = {"retry_initial_seconds": 0.5, "retry_max_seconds": 1}


def _gateway(gateway_factory: GatewayFactory, relay: Relay) -> Gateway:
    return gateway_factory("gw", [User(ALICE, "manual")], relay_port=relay.port, relay=FAST_RETRY)


def _submit(gw: Gateway, tmp: Path, uid: str, attendees: tuple[str, ...]) -> None:
    ics = vevent(
        uid=uid,
        start=ical_time(future(10)),
        end=ical_time(future(10, hour=11)),
        attendees=tuple((a, "NEEDS-ACTION") for a in attendees),
        dtstamp=now_stamp(),
    )
    path = tmp / f"{uid}.ics"
    path.write_text(ics, encoding="utf-8")
    gw.cli_json("send", str(path))


def _row(gw: Gateway, uid: str, recipient: str, statuses: tuple[str, ...]) -> Any:
    for row in gw.reader.outbox():
        if row["uid"] == uid and row["recipient"] == recipient and row["status"] in statuses:
            return row
    return None


def test_relay_451_then_250_is_retried_and_delivered_exactly_once(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    relay.script_data("451 4.3.0 Try again later")
    gw = _gateway(gateway_factory, relay)
    uid = "retry-1@example.org"

    _submit(gw, tmp_path, uid, (BOB,))
    wait_until(lambda: _row(gw, uid, BOB, ("sent", "failed")), "the outbox row to be sent")

    rows = [r for r in gw.cli_json("outbox", "list") if r["uid"] == uid]
    assert len(rows) == 1
    assert rows[0]["status"] == "sent"
    assert rows[0]["attempts"] == 2
    assert rows[0]["method"] == "REQUEST"
    # The relay answered two DATAs: the 451 and the 250; it holds one copy.
    to_bob = [m for m in relay.seen if BOB in m.rcpt_tos]
    assert [m.reply[:3] for m in to_bob] == ["451", "250"]
    assert len(relay.delivered(to=BOB)) == 1
    assert relay.delivered(to=BOB)[0].headers["Message-ID"] == rows[0]["message_id"]
    # A temporary failure is not a delivery failure: nothing 5.x on the attendee.
    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    bob = next(a for a in copy["instances"][0]["attendees"] if a["address"] == BOB)
    assert not (bob["schedule_status"] or "").startswith("5")


def test_relay_550_fails_the_row_and_marks_the_attendee_with_a_schedule_status(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    relay.refuse_rcpt[NOBODY] = "550 5.1.1 <nobody@remote.test>: no such user"
    gw = _gateway(gateway_factory, relay)
    uid = "refused-1@example.org"

    _submit(gw, tmp_path, uid, (BOB, NOBODY))
    wait_until(
        lambda: _row(gw, uid, NOBODY, ("failed",)) and _row(gw, uid, BOB, ("sent",)),
        "the refused row to fail and the other to be sent",
    )

    rows = {r["recipient"]: r for r in gw.call("outbox", "list") if r["uid"] == uid}
    assert rows[NOBODY]["status"] == "failed"
    assert rows[NOBODY]["attempts"] == 1  # permanent: never retried
    assert "550" in (rows[NOBODY]["last_error"] or "")
    assert rows[BOB]["status"] == "sent"

    def schedule_status() -> Any:
        copy = gw.reader.events(uid, ALICE)
        atts = {a["address"]: a for a in copy[0]["instances"][0]["attendees"]}
        return atts[NOBODY]["schedule_status"]

    wait_until(schedule_status, "the 5xx to be recorded on the attendee")
    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    atts = {a["address"]: a for a in copy["instances"][0]["attendees"]}
    # RFC 6638 section 3.2.9: an unknown mailbox is an invalid calendar user.
    assert atts[NOBODY]["schedule_status"] == "3.7", atts[NOBODY]
    assert not (atts[BOB]["schedule_status"] or "").startswith("5"), atts[BOB]
    assert relay.delivered(to=NOBODY) == []
    assert len(relay.delivered(to=BOB)) == 1

    # The operator fixed the address at the relay and retries the failed row.
    del relay.refuse_rcpt[NOBODY]
    gw.cli("outbox", "retry", str(rows[NOBODY]["id"]))
    wait_until(lambda: _row(gw, uid, NOBODY, ("sent",)), "the retried row to be sent")
    assert len(relay.delivered(to=NOBODY)) == 1
    assert len(relay.delivered(to=BOB)) == 1


def _bounce(original: bytes, bounce_to: str, failed: str, message_id: str) -> bytes:
    """A Postfix-style RFC 3464 report: the relay accepted, the next hop refused."""
    headers = original.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return (
        "From: MAILER-DAEMON@relay.test (Mail Delivery System)\r\n"
        f"To: {bounce_to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Date: Mon, 05 Jan 2026 09:00:00 +0000\r\n"
        f"Message-ID: {message_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;"
        ' boundary="dsn-b"\r\n'
        "\r\n"
        "--dsn-b\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        f"<{failed}>: host mx.remote.test said: 550 5.1.1 no such user\r\n"
        "\r\n"
        "--dsn-b\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; relay.test\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {failed}\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"
        "\r\n"
        "--dsn-b\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        f"{headers}\r\n"
        "--dsn-b--\r\n"
    ).encode()


def test_bounce_for_a_sent_invitation_marks_the_attendee_with_a_schedule_status(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    gw = _gateway(gateway_factory, relay)
    assert gw.smtp_port is not None
    uid = "bounced-1@example.org"

    _submit(gw, tmp_path, uid, (BOB, NOBODY))
    wait_until(lambda: len(relay.delivered(method="REQUEST")) == 2, "both REQUESTs relayed")
    original = relay.delivered(to=NOBODY)[0]
    bounce_to = original.mail_from  # the envelope sender: where bounces go
    assert bounce_to == "imip-gateway@gw.gw.test"
    bounce = _bounce(original.data, bounce_to, NOBODY, "<bounce-1@relay.test>")
    assert smtp_send(gw.smtp_port, bounce, mail_from="", rcpt_tos=[bounce_to]) == {}

    def bounce_row() -> Any:
        return next(
            (
                m["id"]
                for m in gw.reader.messages()
                if m["message_id"] == "<bounce-1@relay.test>" and m["status"] == "done"
            ),
            None,
        )

    row_id = wait_until(bounce_row, "the bounce to be processed")
    outcomes = gw.call("messages", "show", str(row_id))["outcomes"]
    assert [o["outcome"] for o in outcomes] == ["applied"], outcomes
    assert outcomes[0]["uid"] == uid
    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    atts = {a["address"]: a for a in copy["instances"][0]["attendees"]}
    assert atts[NOBODY]["schedule_status"] == "3.7"  # the report said 5.1.1: bad mailbox
    assert "5.1.1" in atts[NOBODY]["request_status"]
    assert not (atts[BOB]["schedule_status"] or "").startswith("5")
    # A bounce is never answered (RFC 3834 section 2).
    assert [r for r in gw.reader.outbox() if r["journal_id"] == row_id] == []


def test_row_that_keeps_failing_temporarily_is_given_up_after_max_age_and_recorded(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    relay.script_data(*["451 4.3.0 Try again later"] * 50)
    gw = gateway_factory(
        "gw",
        [User(ALICE, "manual")],
        relay_port=relay.port,
        # About one second of queue lifetime (like an MTA's maximal_queue_lifetime).
        relay={**FAST_RETRY, "max_age_hours": 0.0003},
    )
    uid = "expired-1@example.org"
    _submit(gw, tmp_path, uid, (BOB,))
    wait_until(lambda: _row(gw, uid, BOB, ("failed",)), "the row to be given up")

    row = next(r for r in gw.call("outbox", "list") if r["uid"] == uid)
    assert row["status"] == "failed"
    assert row["attempts"] >= 1
    assert "451" in (row["last_error"] or "")
    assert relay.delivered(to=BOB) == []

    def schedule_status() -> Any:
        copy = gw.reader.events(uid, ALICE)
        return copy[0]["instances"][0]["attendees"][0]["schedule_status"]

    wait_until(schedule_status, "the expiry to be recorded on the attendee")
    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    # Given up after max_age_hours: "could not be delivered" (RFC 6638 section 3.2.9).
    assert copy["instances"][0]["attendees"][0]["schedule_status"] == "5.1"


def test_relay_mode_invitation_refused_with_550_marks_the_attendee_with_a_schedule_status(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    """alice's own client sends through the gateway (relay mode); one address bounces."""
    relay = relay_factory().start()
    relay.refuse_rcpt[NOBODY] = "550 5.1.1 <nobody@remote.test>: no such user"
    gw = gateway_factory(
        "gw",
        [User(ALICE, "manual")],
        relay_port=relay.port,
        relay=FAST_RETRY,
        smtp_listener={"relay_mode": True, "relay_trusted_networks": ["127.0.0.0/8"]},
    )
    assert gw.smtp_port is not None
    uid = "relayed-refused-1@example.org"
    cal = vevent(
        uid=uid,
        start=ical_time(future(10)),
        end=ical_time(future(10, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"), (NOBODY, "NEEDS-ACTION")),
        dtstamp=now_stamp(),
    )
    mail = imip_mail(cal, sender=ALICE, to=f"{BOB}, {NOBODY}", message_id="<client-9@example.org>")
    assert smtp_send(gw.smtp_port, mail, mail_from=ALICE, rcpt_tos=[BOB, NOBODY]) == {}

    def settled() -> bool:
        rows = gw.reader.outbox()
        return len(rows) == 2 and {r["status"] for r in rows} == {"sent", "failed"}

    wait_until(settled, "one forward sent, one refused")
    rows = {r["recipient"]: r for r in gw.call("outbox", "list")}
    assert rows[NOBODY]["status"] == "failed"
    assert rows[BOB]["status"] == "sent"
    copy = gw.call("events", "show", uid, "--owner", ALICE)[0]
    atts = {a["address"]: a for a in copy["instances"][0]["attendees"]}
    assert atts[NOBODY]["schedule_status"] == "3.7", atts[NOBODY]
