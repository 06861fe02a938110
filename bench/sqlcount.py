"""Count the SQL statements and time one message costs in the processing path.

``python -m bench.sqlcount`` journals and processes (in-process, the ``ingest`` path)
a few invitations of each shape and replies to stored events, and prints per message:
statements executed, the most frequent statement shapes, and the wall time of the
unit of work.  A profiling aid for the lead; not part of the table.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

from bench import messages as msgs
from bench.daemon import GatewayConfig
from bench.messages import ORGANISER, RESPONDER, EventSpec
from bench.preload import open_services, submit_events

__all__ = ["main"]


def _shape(sql: str) -> str:
    sql = " ".join(sql.split())
    sql = re.sub(r"\(\?(, \?)*\)", "(...)", sql)
    return sql[:110]


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="imip-sqlcount-"))
    config = GatewayConfig(workdir, relay_port=9)
    config.write()
    config.cli("db", "upgrade")
    now = msgs.now_utc()
    specs = [EventSpec(5), EventSpec(50), EventSpec(200), EventSpec(1000), EventSpec(5, 10)]
    for spec in specs:
        submit_events(config.path, config.database_url, "sc", [(spec, 1)], now)
    services = open_services(config.path)
    seen: list[str] = []

    @event.listens_for(services.store.engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    def measure(label: str, message: msgs.BenchMessage, rcpt: str) -> None:
        seen.clear()
        t0 = time.perf_counter()
        _jid, _dup, outcomes = services.ingest_now(
            message.data, recipients=[rcpt], sender=message.mail_from
        )
        ms = (time.perf_counter() - t0) * 1000
        top = Counter(_shape(s) for s in seen).most_common(4)
        print(f"{label:<28} {len(seen):>5} statements {ms:7.1f} ms  {outcomes[0]['outcome']}")
        for shape, n in top:
            print(f"      {n:>5} x {shape}")

    for i, spec in enumerate(specs):
        for k in range(2):  # the second one runs with warm statement caches
            serial = 1000 + 10 * i + k
            request = msgs.request_mail(serial=serial, run_id="sc", spec=spec, now=now)
            measure(f"REQUEST {spec.label} #{k}", request, RESPONDER)
    for i, spec in enumerate(specs):
        for k in range(2):
            reply = msgs.reply_mail(
                serial=2000 + 10 * i + k,
                run_id="sc",
                spec=spec,
                event_index=0,
                attendee_index=k,
                now=now,
            )
            measure(f"REPLY to {spec.label} #{k}", reply, ORGANISER)
    services.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
