"""``imip-gateway serve`` as an operator meets it: start, refuse to start, stop.

A daemon that cannot bind its listener must exit 1 with the reason in its log (the
supervisor restarts it or alerts), never hang half-started; a second daemon on the
same port is the usual way to get there.
"""

from __future__ import annotations

import signal
import smtplib
import socket
from typing import Any

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import User, future, ical_time, now_stamp, wait_until
from tests.services.helpers import imip_mail, vevent

BOB = "bob@example.net"


def test_serve_exits_1_with_the_reason_when_its_smtp_port_is_taken(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    first = gateway_factory("first", [User(BOB, "accept")], relay_port=relay.port)
    second = gateway_factory("second", [User(BOB, "accept")], relay_port=relay.port, start=False)
    # Same port as the running daemon (the configs differ only in their directories).
    assert first.smtp_port is not None
    text = second.config.read_text().replace(
        f"port = {second.smtp_port}\n", f"port = {first.smtp_port}\n", 1
    )
    second.config.write_text(text)

    second.daemon.start(wait=False)
    assert second.daemon.proc is not None
    code = second.daemon.proc.wait(60)
    assert code == 1
    log = second.daemon.log_since_start()
    assert "address already in use" in log
    assert "imip-gateway ready" not in log
    # The first daemon is unaffected and still answers.
    assert first.daemon.running
    with smtplib.SMTP("127.0.0.1", first.smtp_port, timeout=30) as client:
        assert client.noop()[0] == 250


def test_sigterm_lets_a_transaction_in_data_finish_with_250_then_exits_0(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    """RFC 5321 section 3.8 / the listener's drain: a client that is sending its DATA
    when SIGTERM arrives may finish; it gets 250 (journaled), later sessions get 421."""
    relay = relay_factory().start()
    gw = gateway_factory("gw", [User(BOB, "accept")], relay_port=relay.port)
    assert gw.smtp_port is not None
    cal = vevent(
        uid="drain-1@remote.test",
        organizer="olga@remote.test",
        start=ical_time(future(9)),
        end=ical_time(future(9, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"),),
        dtstamp=now_stamp(),
    )
    data = imip_mail(cal, sender="olga@remote.test", to=BOB, message_id="<drain-1@remote.test>")
    head, tail = data[: len(data) // 2], data[len(data) // 2 :]

    with socket.create_connection(("127.0.0.1", gw.smtp_port), timeout=30) as sock:
        stream = sock.makefile("rwb")

        def command(line: bytes | None) -> bytes:
            if line is not None:
                stream.write(line + b"\r\n")
                stream.flush()
            reply = stream.readline()
            while reply[3:4] == b"-":
                reply = stream.readline()
            return reply

        assert command(None).startswith(b"220")
        assert command(b"EHLO client.test").startswith(b"250")
        assert command(b"MAIL FROM:<olga@remote.test>").startswith(b"250")
        assert command(f"RCPT TO:<{BOB}>".encode()).startswith(b"250")
        assert command(b"DATA").startswith(b"354")
        stream.write(head)
        stream.flush()
        assert gw.daemon.proc is not None
        gw.daemon.proc.send_signal(signal.SIGTERM)
        wait_until(
            lambda: "waiting for 1 transaction(s) in DATA" in gw.daemon.log_since_start(),
            "the listener to wait for the transaction in DATA",
        )
        final = command(tail + b"\r\n.")
        assert final.startswith(b"250"), final

    assert gw.daemon.proc.wait(60) == 0
    # Accepted means durable: after a restart the message is there and processed once.
    gw.daemon.start()
    wait_until(lambda: gw.reader.all_processed(1), "the drained message")
    journal = gw.call("messages", "list")
    assert [m["message_id"] for m in journal] == ["<drain-1@remote.test>"]
    assert journal[0]["status"] == "done"
