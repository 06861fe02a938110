"""The daemon as a Postfix after-queue content filter, over real SMTP sockets.

Postfix hands every message to the gateway and expects it back on its re-injection
port (here: the sink relay).  Everything must come back unchanged, for every
recipient, while invitations for local users are also processed.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
from pathlib import Path

from tests.services.helpers import imip_mail, vevent
from tests.support.inprocess import running_gateway
from tests.support.smtp_sink import SmtpSink


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send(port: int, sender: str, rcpts: list[str], raw: bytes) -> dict[str, object]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return dict(client.sendmail(sender, rcpts, raw))


async def test_content_filter_hands_every_message_back_and_processes_invitations(
    tmp_path: Path,
) -> None:
    port = _free_port()
    async with SmtpSink() as sink:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            f"""
[gateway]
hostname = "gw.test"
[database]
url = "sqlite:///{tmp_path / "gw.sqlite3"}"
[listeners.smtp]
port = {port}
content_filter = true
relay_trusted_networks = ["127.0.0.0/8"]
[relay]
host = "127.0.0.1"
port = {sink.port}
from_address = "bounces@gw.test"
[[users]]
address = "bob@example.net"
policy = "accept"
""",
            encoding="utf-8",
        )
        async with running_gateway(cfg):
            plain = (
                b"From: someone@far.example\r\nTo: zoe@elsewhere.example\r\n"
                b"Subject: not a calendar\r\nMessage-ID: <plain-1@far.example>\r\n\r\nhello\r\n"
            )
            invite = imip_mail(
                vevent(uid="cf-1@example.org"),
                sender="alice@example.org",
                to="bob@example.net",
                message_id="<cf-invite@client.test>",
            )
            refused = await asyncio.to_thread(
                _send, port, "someone@far.example", ["zoe@elsewhere.example"], plain
            )
            assert refused == {}
            refused = await asyncio.to_thread(
                _send, port, "alice@example.org", ["bob@example.net", "carol@far.example"], invite
            )
            assert refused == {}
            # Three hand-backs (zoe, bob, carol) plus bob's automatic REPLY to alice.
            received = await sink.wait_for_messages(4, timeout=30)
            back = {
                (m.rcpt_tos, m.mail_from): m.data for m in received if m.data in (plain, invite)
            }
            assert back == {
                (("zoe@elsewhere.example",), "someone@far.example"): plain,
                (("bob@example.net",), "alice@example.org"): invite,
                (("carol@far.example",), "alice@example.org"): invite,
            }
            replies = [m for m in received if m.data not in (plain, invite)]
            assert len(replies) == 1
            assert replies[0].rcpt_tos == ("alice@example.org",)
            assert replies[0].mail_from == "bounces@gw.test"
            assert b"METHOD:REPLY" in replies[0].data
            await asyncio.sleep(1.0)
            assert len(sink.messages) == 4  # nothing handed back twice


async def test_content_filter_is_not_an_open_relay_for_untrusted_clients(tmp_path: Path) -> None:
    port = _free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[database]
url = "sqlite:///{tmp_path / "gw.sqlite3"}"
[listeners.smtp]
port = {port}
content_filter = true
relay_trusted_networks = ["192.0.2.0/24"]
[[users]]
address = "bob@example.net"
""",
        encoding="utf-8",
    )
    async with running_gateway(cfg):

        def attempt() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo()
                client.mail("someone@far.example")
                return client.rcpt("zoe@elsewhere.example")

        code, text = await asyncio.to_thread(attempt)
        assert code == 550
        assert b"5.1.1" in text
