"""Nothing accepted is lost, nothing is applied twice: SIGKILL, SIGTERM, relay outage.

Issue 4: "accepted means durable" (250 only after the journal commit) and "kill the
daemon (SIGKILL) between the 250 and the end of processing: on restart the message is
processed exactly once".  ARCHITECTURE.md section 6: a message being processed is
leased (``processing_lease_seconds``, 2 s here); a worker that died leaves the lease,
which expires and the message is processed again, once.

A burst of distinct invitations to bob (policy accept) arrives over several SMTP
connections at once; the daemon is killed in the middle.  Only the Message-IDs that
got their 250 count as accepted; each must end with exactly one journal row (status
done), exactly one outcome for its one calendar part, and exactly one REPLY in the
outbox.  Per-row outcomes of hundreds of rows are read with the CLI's own read model
in-process (``messages show`` per row would start a hundred CLI processes); the
journal and outbox lists come from the CLI.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.support import (
    Burst,
    User,
    future,
    ical_time,
    now_stamp,
    processing_children,
    smtp_send,
    wait_until,
)
from tests.services.helpers import imip_mail, vevent

pytestmark = pytest.mark.slow

BOB = "bob@example.net"


def invitations(prefix: str, count: int) -> list[tuple[str, str, list[str], bytes]]:
    """``count`` distinct REQUESTs to bob, each from its own organiser.

    One organiser per invitation keeps the auto-reply rate limit (per correspondent,
    RFC 3834) out of the way: every invitation must be answered.
    """
    out = []
    for i in range(count):
        organiser = f"org{i}@remote.test"
        mid = f"<{prefix}-{i}@remote.test>"
        cal = vevent(
            uid=f"{prefix}-{i}@remote.test",
            organizer=organiser,
            start=ical_time(future(5 + i % 20, hour=8 + i % 8)),
            end=ical_time(future(5 + i % 20, hour=9 + i % 8)),
            attendees=((BOB, "NEEDS-ACTION"),),
            summary=f"Burst {i}",
            dtstamp=now_stamp(),
        )
        out.append(
            (mid, organiser, [BOB], imip_mail(cal, sender=organiser, to=BOB, message_id=mid))
        )
    return out


def _bob_gateway(gateway_factory: GatewayFactory, relay_port: int, **kw: Any) -> Gateway:
    return gateway_factory(
        "gw",
        [User(BOB, "accept")],
        relay_port=relay_port,
        gateway={"processing_lease_seconds": 2},
        relay={"retry_initial_seconds": 0.5, "retry_max_seconds": 1},
        **kw,
    )


def assert_each_processed_exactly_once(gw: Gateway, accepted: list[str], prefix: str) -> None:
    """Journal, outcomes and outbox after recovery: one of each per accepted message."""
    journal = gw.cli_json("messages", "list", "--limit", "100000")
    by_mid = Counter(m["message_id"] for m in journal)
    duplicates = {mid: n for mid, n in by_mid.items() if n > 1}
    assert duplicates == {}, f"journaled twice: {duplicates}"
    missing = [mid for mid in accepted if mid not in by_mid]
    assert missing == [], f"accepted (250) but not journaled: {missing}"
    not_done = [(m["message_id"], m["status"]) for m in journal if m["status"] != "done"]
    assert not_done == []

    for row in journal:
        detail = gw.reader.message(row["id"])
        assert detail is not None
        outcomes = detail["outcomes"]
        assert len(outcomes) == 1, (row["message_id"], outcomes)
        assert outcomes[0]["outcome"] == "applied", (row["message_id"], outcomes)
        assert outcomes[0]["recipient"] == BOB

    # Journaled = accepted, plus possibly messages whose 250 was lost in the kill.
    uids = {m["message_id"].strip("<>") for m in journal}
    replies = [
        r
        for r in gw.call("outbox", "list", "--limit", "100000")
        if r["method"] == "REPLY" and r["uid"].startswith(prefix)
    ]
    per_uid = Counter(r["uid"] for r in replies)
    assert {u: n for u, n in per_uid.items() if n != 1} == {}, "a REPLY was queued twice"
    assert set(per_uid) == uids


def test_sigkill_in_the_middle_of_a_burst_loses_nothing_and_applies_nothing_twice(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = _bob_gateway(gateway_factory, relay.port)
    assert gw.smtp_port is not None
    mails = invitations("kill", 100)

    # Processing is faster than this burst, so hold the processing process (SIGSTOP)
    # to be sure a backlog exists, then let it claim a batch and kill everything while
    # it works: the kill finds rows leased mid-processing and rows not yet claimed.
    (child,) = processing_children(gw.daemon.pid)
    os.kill(child, signal.SIGSTOP)
    burst = Burst(gw.smtp_port, mails, connections=4, pause=0.02).start()
    wait_until(lambda: burst.accepted_count >= 40, "40 messages to be accepted", interval=0.01)
    os.kill(child, signal.SIGCONT)
    wait_until(
        lambda: any(m["status"] == "processing" for m in gw.reader.messages()),
        "the processing process to claim a batch",
        interval=0.005,
    )
    assert gw.daemon.kill_all() == -9
    burst.join()
    accepted = list(burst.accepted)
    assert 40 <= len(accepted) < len(mails)  # killed in the middle

    # What the killed processes left behind: accepted work not finished.
    unfinished = [m for m in gw.reader.messages() if m["status"] != "done"]
    assert unfinished, "the kill came after all processing: nothing to recover"

    gw.daemon.start()
    wait_until(lambda: gw.reader.all_processed(len(accepted)), "recovery of every message", 120)
    assert_each_processed_exactly_once(gw, accepted, "kill-")
    print(f"accepted {len(accepted)}/{len(mails)}; unfinished at the kill: {len(unfinished)}")

    # The MTA now retries everything that did not get its 250, as it must.  Some of
    # those may have been journaled just before the kill (the 250 was lost): the
    # journal recognises the same Message-ID and bytes and does not apply them again.
    retried = {mid for mid, _ in burst.not_accepted}
    retry = Burst(gw.smtp_port, [m for m in mails if m[0] in retried], connections=2).start()
    retry.join()
    assert sorted(retry.accepted) == sorted(retried), retry.not_accepted
    wait_until(lambda: gw.reader.all_processed(len(mails)), "the retried messages", 120)
    assert_each_processed_exactly_once(gw, [m[0] for m in mails], "kill-")


def test_sigterm_during_a_burst_exits_0_and_every_accepted_message_is_processed(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = _bob_gateway(gateway_factory, relay.port)
    assert gw.smtp_port is not None
    mails = invitations("term", 60)

    burst = Burst(gw.smtp_port, mails, connections=3, pause=0.02).start()
    wait_until(lambda: burst.accepted_count >= 20, "20 messages to be accepted", interval=0.01)
    assert gw.daemon.terminate() == 0
    burst.join()
    accepted = list(burst.accepted)
    assert len(accepted) >= 20

    gw.daemon.start()
    wait_until(lambda: gw.reader.all_processed(len(accepted)), "every accepted message", 120)
    assert_each_processed_exactly_once(gw, accepted, "term-")


def test_replies_wait_in_the_outbox_while_the_relay_is_down_then_go_out_once(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory()  # not started: nothing listens on its port yet
    gw = _bob_gateway(gateway_factory, relay.port)
    assert gw.smtp_port is not None
    mails = invitations("down", 15)
    for mid, mail_from, rcpts, data in mails:
        assert smtp_send(gw.smtp_port, data, mail_from=mail_from, rcpt_tos=rcpts) == {}, mid
    wait_until(lambda: gw.reader.all_processed(len(mails)), "the invitations to be processed")

    def all_tried() -> bool:
        rows = [r for r in gw.reader.outbox() if r["method"] == "REPLY"]
        return len(rows) == len(mails) and all(r["attempts"] >= 1 for r in rows)

    wait_until(all_tried, "every REPLY to be tried against the dead relay")
    rows = [r for r in gw.call("outbox", "list") if r["method"] == "REPLY"]
    assert len(rows) == len(mails)
    for row in rows:
        assert row["status"] in ("pending", "sending"), row
        assert row["attempts"] >= 1
        assert row["last_error"], row

    relay.start()

    def all_sent() -> bool:
        rows = [r for r in gw.reader.outbox() if r["method"] == "REPLY"]
        return all(r["status"] == "sent" for r in rows)

    wait_until(all_sent, "every REPLY to be sent once the relay is back", 120)
    rows = [r for r in gw.call("outbox", "list") if r["method"] == "REPLY"]
    assert {r["status"] for r in rows} == {"sent"}
    delivered = Counter(str(m.headers["Message-ID"]) for m in relay.delivered(method="REPLY"))
    assert delivered == Counter({r["message_id"]: 1 for r in rows})
