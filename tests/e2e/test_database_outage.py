"""The database goes away under a running daemon, then comes back (issue 4).

"A processing error or a database outage answers 451 4.3.0 (try later), never a 5xx"
and "the daemon never crashes on a message": while PostgreSQL is down the SMTP listener
must answer 451 (the MTA keeps the message and retries), the daemon must stay up, and
once the database is back the retried message is accepted, processed and answered.
The test runs its own PostgreSQL server, so stopping it disturbs no other test.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import User, cli, future, ical_time, now_stamp, wait_until
from tests.services.helpers import imip_mail, vevent
from tests.support.postgres import PostgresServer, PostgresUnavailable, running_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BOB = "bob@example.net"
ORGANISER = "olga@remote.test"


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is required in CI (CI=true): {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL tests skipped: {exc}")


def pg_ctl(server: PostgresServer, action: str) -> None:
    """Stop or start the server in place (same data directory, port and socket dir)."""
    prefix = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        assert runuser is not None
        prefix = [runuser, "-u", "postgres", "--"]
    base = server.data_dir.parent
    cmd = [*prefix, str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-w"]
    if action == "stop":
        cmd += ["-m", "fast", "stop"]
    else:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={server.port}"
            f" -c unix_socket_directories={base} -c fsync=off -c synchronous_commit=off"
            " -c full_page_writes=off -c max_connections=100"
        )
        cmd += ["-l", str(base / "server.log"), "-o", options, "-t", "60", "start"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=90)


def invitation(i: int) -> bytes:
    cal = vevent(
        uid=f"outage-{i}@remote.test",
        organizer=ORGANISER,
        start=ical_time(future(6 + i)),
        end=ical_time(future(6 + i, hour=11)),
        attendees=((BOB, "NEEDS-ACTION"),),
        dtstamp=now_stamp(),
    )
    return imip_mail(cal, sender=ORGANISER, to=BOB, message_id=f"<outage-{i}@remote.test>")


def deliver(port: int, data: bytes) -> tuple[int, str]:
    """One delivery; the final reply (code, text) instead of an exception."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail(ORGANISER, [BOB], data)
    except smtplib.SMTPResponseException as exc:
        error = exc.smtp_error
        return exc.smtp_code, error.decode("utf-8", "replace") if isinstance(
            error, bytes
        ) else error
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = next(iter(exc.recipients.values()))
        return code, text.decode("utf-8", "replace")
    return 250, "ok"


def test_database_outage_answers_451_keeps_running_and_recovers(
    gateway_factory: GatewayFactory, relay_factory: Any, own_postgres: PostgresServer
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory(
        "gw",
        [User(BOB, "accept")],
        relay_port=relay.port,
        database_url=own_postgres.url(),
        relay={"retry_initial_seconds": 0.5, "retry_max_seconds": 1},
        start=False,
    )
    cli(gw.config, "db", "upgrade")
    gw.daemon.start()
    assert gw.smtp_port is not None
    assert deliver(gw.smtp_port, invitation(1)) == (250, "ok")
    wait_until(lambda: gw.reader.all_processed(1), "the first invitation")

    pg_ctl(own_postgres, "stop")
    try:
        code, text = deliver(gw.smtp_port, invitation(2))
        assert code == 451, (code, text)  # try later: the MTA keeps the message
        assert "4.3.0" in text
        assert gw.daemon.running
    finally:
        pg_ctl(own_postgres, "start")

    # The MTA retries; the first attempts may still meet dead pooled connections.
    port = gw.smtp_port
    wait_until(lambda: deliver(port, invitation(2))[0] == 250, "a 250 after the outage")
    assert gw.daemon.running
    wait_until(lambda: gw.reader.all_processed(2), "the retried invitation")
    journal = gw.call("messages", "list")
    assert sorted(m["message_id"] for m in journal) == [
        "<outage-1@remote.test>",
        "<outage-2@remote.test>",
    ]
    assert {m["status"] for m in journal} == {"done"}

    def both_sent() -> bool:
        rows = [r for r in gw.reader.outbox() if r["method"] == "REPLY"]
        return len(rows) == 2 and all(r["status"] == "sent" for r in rows)

    wait_until(both_sent, "both REPLYs to be sent")
    assert len(relay.delivered(method="REPLY")) == 2
