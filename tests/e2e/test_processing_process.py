"""The daemon as two processes (``gateway.processing_process``, the default).

``serve`` keeps the listeners and starts ``serve --role processing`` as its child for
journal processing and the outbox (issue 5: one core each).  What an operator relies
on: a killed processing process is replaced and no accepted message is lost; a killed
``serve`` takes its child with it (no orphan writing to the database); and with
``processing_process = false`` everything still works in one process.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.support import (
    User,
    future,
    ical_time,
    now_stamp,
    processing_children,
    smtp_send,
    wait_until,
)
from tests.services.helpers import imip_mail, vevent

ORGANISER = "olga@remote.test"
BOB = "bob@example.net"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _invite(gw: Gateway, n: int) -> str:
    uid = f"split-{n}@remote.test"
    cal = vevent(
        uid=uid,
        organizer=ORGANISER,
        start=ical_time(future(6 + n)),
        end=ical_time(future(6 + n, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"),),
        dtstamp=now_stamp(),
    )
    mid = f"<split-{n}@remote.test>"
    assert gw.smtp_port is not None
    refused = smtp_send(
        gw.smtp_port,
        imip_mail(cal, sender=ORGANISER, to=BOB, message_id=mid),
        mail_from=ORGANISER,
        rcpt_tos=[BOB],
    )
    assert refused == {}
    return mid


def _replied(relay: Any, count: int) -> bool:
    return len(relay.delivered(to=ORGANISER, method="REPLY")) == count


def test_a_killed_processing_process_is_replaced_and_the_message_still_answered(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory(
        "gw",
        [User(BOB, "accept")],
        relay_port=relay.port,
        gateway={"processing_lease_seconds": 2},
    )
    assert "processing in a second process" in gw.daemon.log_since_start()
    _invite(gw, 1)
    wait_until(lambda: _replied(relay, 1), "the REPLY from the processing process")
    (child,) = processing_children(gw.daemon.pid)

    os.kill(child, signal.SIGKILL)
    wait_until(
        lambda: [c for c in processing_children(gw.daemon.pid) if c != child],
        "a new processing process",
        timeout=30,
    )
    # Intake never stopped; the new child processes what arrives now.
    _invite(gw, 2)
    wait_until(lambda: _replied(relay, 2), "the REPLY from the new processing process")
    assert gw.daemon.running
    log = gw.daemon.log_since_start()
    assert f"the processing process (pid {child}) exited" in log


def test_killing_serve_takes_the_processing_process_down_too(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory("gw", [User(BOB, "accept")], relay_port=relay.port)
    (child,) = processing_children(gw.daemon.pid)
    assert gw.daemon.kill() == -signal.SIGKILL
    # The child reads end of file on its stdin, drains and exits on its own.
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the processing process outlived its parent"
    # A restart serves again (the fixture's SIGTERM at the end then checks the drain).
    gw.daemon.start()
    _invite(gw, 3)
    wait_until(lambda: _replied(relay, 1), "the REPLY after the restart")


def test_one_process_mode_runs_everything_in_serve(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory(
        "gw", [User(BOB, "accept")], relay_port=relay.port, gateway={"processing_process": False}
    )
    assert processing_children(gw.daemon.pid) == []
    _invite(gw, 4)
    wait_until(lambda: _replied(relay, 1), "the REPLY from the one process")
