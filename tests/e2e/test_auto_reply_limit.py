"""The automatic-reply rate limit (RFC 3834 section 2) is visible in the journal.

``gateway.auto_reply_limit_per_hour`` caps automatic answers to one correspondent, a
guard against mail loops with another auto-responder.  When it holds a REPLY back, the
organiser never learns the answer, so the journal must say so: "every refusal is an
outcome with its reason" (issue 4), and an outcome that claims the REPLY was sent when
it was not misleads the operator.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import User, future, ical_time, now_stamp, smtp_send, wait_until
from tests.services.helpers import imip_mail, vevent

BOB = "bob@example.net"
ORGANISER = "olga@remote.test"


def test_reply_held_back_by_the_rate_limit_is_recorded_as_not_sent(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory(
        "gw",
        [User(BOB, "accept")],
        relay_port=relay.port,
        gateway={"auto_reply_limit_per_hour": 2},
    )
    assert gw.smtp_port is not None
    for i in range(3):
        cal = vevent(
            uid=f"limited-{i}@remote.test",
            organizer=ORGANISER,
            start=ical_time(future(5 + i)),
            end=ical_time(future(5 + i, hour=11)),
            attendees=((BOB, "NEEDS-ACTION"),),
            dtstamp=now_stamp(),
        )
        mail = imip_mail(cal, sender=ORGANISER, to=BOB, message_id=f"<limited-{i}@remote.test>")
        assert smtp_send(gw.smtp_port, mail, mail_from=ORGANISER, rcpt_tos=[BOB]) == {}
    wait_until(lambda: gw.reader.all_processed(3), "the three invitations")

    replies = [r for r in gw.call("outbox", "list") if r["method"] == "REPLY"]
    assert len(replies) == 2  # the limit holds: two answers within the hour
    answered = {r["uid"] for r in replies}
    journal = {m["message_id"]: m["id"] for m in gw.call("messages", "list")}
    (unanswered,) = {f"limited-{i}@remote.test" for i in range(3)} - answered
    outcome = gw.call("messages", "show", str(journal[f"<{unanswered}>"]))["outcomes"][0]
    assert "sent" not in outcome["reason"].replace("not sent", ""), outcome
    assert "rate" in outcome["reason"].lower(), outcome
