"""Two ``serve`` replicas on one PostgreSQL database (README: "PostgreSQL carries
several replicas"; ARCHITECTURE.md section 6: leases and row locks).

Both replicas listen for mail, both process the journal and both drain the outbox.
A burst of distinct invitations arrives at both listeners at once; every message must
be processed by exactly one replica (one journal row, one outcome) and every REPLY
handed to the relay exactly once.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import GatewayFactory
from tests.e2e.support import Burst, User, cli, wait_until
from tests.e2e.test_crash_recovery import BOB, assert_each_processed_exactly_once, invitations

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_two_replicas_on_postgresql_process_and_send_each_message_exactly_once(
    gateway_factory: GatewayFactory, relay_factory: Any, fresh_postgres_url: str
) -> None:
    relay = relay_factory().start()
    settings: dict[str, Any] = {
        "relay_port": relay.port,
        "database_url": fresh_postgres_url,
        "gateway": {"processing_lease_seconds": 5},
        "start": False,
    }
    one = gateway_factory("replica-1", [User(BOB, "accept")], **settings)
    two = gateway_factory("replica-2", [User(BOB, "accept")], **settings)
    # serve never migrates PostgreSQL itself (replicas would race): the operator does.
    cli(one.config, "db", "upgrade")
    one.daemon.start()
    two.daemon.start()
    assert one.smtp_port is not None
    assert two.smtp_port is not None

    mails = invitations("replica", 60)
    bursts = [
        Burst(one.smtp_port, mails[0::2], connections=2).start(),
        Burst(two.smtp_port, mails[1::2], connections=2).start(),
    ]
    accepted = [mid for burst in bursts for mid in burst.join().accepted]
    assert len(accepted) == len(mails)

    wait_until(lambda: one.reader.all_processed(len(mails)), "both replicas to finish", 120)
    assert_each_processed_exactly_once(one, accepted, "replica-")

    def all_sent() -> bool:
        rows = [r for r in one.reader.outbox() if r["method"] == "REPLY"]
        return len(rows) == len(mails) and all(r["status"] == "sent" for r in rows)

    wait_until(all_sent, "every REPLY to be sent", 120)
    rows = [r for r in one.call("outbox", "list", "--limit", "1000") if r["method"] == "REPLY"]
    delivered = Counter(str(m.headers["Message-ID"]) for m in relay.delivered(method="REPLY"))
    assert delivered == Counter({r["message_id"]: 1 for r in rows})
    # Both replicas did part of the work (otherwise this proved nothing about sharing).
    logs = one.daemon.log_since_start(), two.daemon.log_since_start()
    assert all("journal" in log and "part 0" in log for log in logs), "a replica was idle"


def test_when_one_replica_is_killed_the_other_finishes_its_accepted_messages(
    gateway_factory: GatewayFactory, relay_factory: Any, fresh_postgres_url: str
) -> None:
    """SIGKILL one replica mid-burst; the survivor takes over its leased messages.

    Nothing restarts the killed replica: its pending rows and expired leases must be
    picked up by the other one (processing_lease_seconds = 2).
    """
    relay = relay_factory().start()
    settings: dict[str, Any] = {
        "relay_port": relay.port,
        "database_url": fresh_postgres_url,
        "gateway": {"processing_lease_seconds": 2},
        "start": False,
    }
    victim = gateway_factory("victim", [User(BOB, "accept")], **settings)
    survivor = gateway_factory("survivor", [User(BOB, "accept")], **settings)
    cli(victim.config, "db", "upgrade")
    victim.daemon.start()
    survivor.daemon.start()
    assert victim.smtp_port is not None

    mails = invitations("takeover", 80)
    burst = Burst(victim.smtp_port, mails, connections=4, pause=0.02).start()
    wait_until(lambda: burst.accepted_count >= 30, "30 messages accepted", interval=0.01)
    assert victim.daemon.kill_all() == -9
    accepted = list(burst.join().accepted)
    assert 30 <= len(accepted) < len(mails)

    wait_until(lambda: survivor.reader.all_processed(len(accepted)), "the takeover", 120)
    assert_each_processed_exactly_once(survivor, accepted, "takeover-")
    assert survivor.daemon.running
