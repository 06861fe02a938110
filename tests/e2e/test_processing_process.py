"""The daemon as two processes (``gateway.processing_process``, the default).

``serve`` keeps the listeners and starts ``serve --role processing`` as its child for
journal processing and the outbox (issue 5: one core each).  What an operator relies
on: a killed processing process is replaced and no accepted message is lost; a killed
``serve`` takes its child with it (no orphan writing to the database); the child
checks the schema before ``serve`` listens (so ``serve`` itself never loads Alembic,
and a wrong schema stops it with exit 1 before any 250); and with
``processing_process = false`` everything still works in one process.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Gateway, GatewayFactory
from tests.e2e.support import (
    User,
    database_url_of,
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


# Runs the real `serve` in this interpreter; once the SMTP port answers, writes which
# schema-migration modules the intake process has loaded, then stops it with SIGTERM.
_SERVE_AND_REPORT_MODULES = r"""
import os, signal, socket, sys, threading, time
from gateway.cli import main

config, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def probe():
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            time.sleep(0.05)
    loaded = [m for m in sys.modules if m == "alembic" or m.startswith("alembic.")]
    loaded += [m for m in sys.modules if m == "gateway.store.migrate"]
    with open(out, "w") as fh:
        fh.write(" ".join(sorted(loaded)) or "none")
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
sys.exit(main(["--config", config, "serve"]))
"""


def test_the_intake_process_never_loads_alembic_its_child_prepared_the_schema(
    gateway_factory: GatewayFactory, relay_factory: Any, tmp_path: Path
) -> None:
    relay = relay_factory().start()
    # Not started: the script below is the serve (on a database that does not exist
    # yet, so its processing process has to create the schema before intake opens).
    gw = gateway_factory("gw", [User(BOB, "accept")], relay_port=relay.port, start=False)
    assert gw.smtp_port is not None
    out = tmp_path / "modules.txt"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SERVE_AND_REPORT_MODULES,
            str(gw.config),
            str(gw.smtp_port),
            str(out),
        ],
        cwd=gw.config.parent,
        check=False,
        capture_output=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("IMIP_GATEWAY_")},
    )
    log = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, log
    assert out.read_text() == "none"
    # Intake opened only after the processing process was ready (schema checked).
    assert log.index("the processing process (pid") < log.index("smtp listening")
    assert "is ready" in log.split("smtp listening")[0]
    # The schema exists and is current: the processing process created it.
    assert gw.cli("db", "current").stdout.strip() != "none"


def test_a_failed_schema_check_in_the_child_stops_serve_with_exit_1_before_listening(
    gateway_factory: GatewayFactory, relay_factory: Any
) -> None:
    relay = relay_factory().start()
    gw = gateway_factory("gw", [User(BOB, "accept")], relay_port=relay.port, start=False)
    gw.cli("db", "upgrade")
    # A database written by a newer gateway: a revision this version does not know.
    path = database_url_of(gw.config).removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")
    db.close()

    gw.daemon.start(wait=False)
    assert gw.daemon.proc is not None
    assert gw.daemon.proc.wait(60) == 1
    log = gw.daemon.log_since_start()
    # The child's own error, then serve's line with the child's status.
    assert "f00dfeedbeef" in log
    assert "exited with status 1 before it was ready" in log
    assert "listening" not in log
    assert "imip-gateway ready" not in log
