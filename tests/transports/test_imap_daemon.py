"""The whole daemon, configured like a user would, picking invitations from IMAP.

Config -> build_app -> run_daemon with a real Dovecot mailbox and a real sink relay:
an invitation delivered to the mailbox is journaled, auto-accepted, marked \\Seen only
afterwards, and the REPLY reaches the relay - exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.services.helpers import imip_mail, vevent
from tests.support.dovecot import DovecotServer
from tests.support.inprocess import running_gateway
from tests.support.smtp_sink import SmtpSink
from tests.transports.conftest import IMAP_PASSWORD, IMAP_USER


async def test_daemon_processes_an_invitation_from_imap_and_replies_once(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    async with SmtpSink() as sink:
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            f"""
[gateway]
hostname = "gw.test"
[database]
url = "sqlite:///{tmp_path / "gw.sqlite3"}"
[listeners.smtp]
enabled = false
[relay]
host = "127.0.0.1"
port = {sink.port}
[[imap.accounts]]
name = "bob"
host = "127.0.0.1"
port = {dovecot.port}
tls = "none"
username = "{IMAP_USER}"
password = "{IMAP_PASSWORD}"
recipient = "bob@example.net"
use_idle = true
liveness_interval_seconds = 1
[[users]]
address = "bob@example.net"
policy = "accept"
""",
            encoding="utf-8",
        )
        async with running_gateway(cfg):
            raw = imip_mail(
                vevent(uid="imap-1@example.org"),
                sender="alice@example.org",
                to="bob@example.net",
                message_id="<imap-invite@client.test>",
            )
            await asyncio.to_thread(dovecot.deliver, IMAP_USER, raw)
            replies = await sink.wait_for_messages(1, timeout=30)
            assert replies[0].rcpt_tos == ("alice@example.org",)
            body = replies[0].data.decode("utf-8", "replace")
            assert "METHOD:REPLY" in body
            assert "PARTSTAT=ACCEPTED" in body
            assert "In-Reply-To: <imap-invite@client.test>" in body
            # \Seen is set once the journal row is durable.
            for _ in range(100):
                flags = await asyncio.to_thread(dovecot.list_flags, IMAP_USER, "INBOX")
                if any("\\Seen" in f for f in flags.values()):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"message never marked \\Seen: {flags}")
            await asyncio.sleep(1.5)  # a further IDLE/poll pass must not re-process it
            assert len(sink.messages) == 1
