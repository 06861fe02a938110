"""CPU per message of the daemon's hot path, in one process, without sockets.

``python -m bench.inproc [request|reply] [-n N] [--mix typical|realistic|50|200|1000|series]
[--profile]``

Journals ``N`` bench messages exactly as the SMTP intake does (one unit of work per
message) and then processes them exactly as the processing worker does (claims of 16,
``prepare`` before the write transaction, ``process_batch`` with the group-commit
budget), plus the outbox's claim and ``mark_sent`` for every queued reply (no network).
Prints CPU microseconds per message for each stage; with ``--profile`` also the top
functions of a cProfile run.
A profiling aid for issue 5, seconds instead of the minutes of ``python -m bench run``;
the table of record is still the end-to-end benchmark.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from bench import messages as msgs
from bench.daemon import GatewayConfig
from bench.preload import open_services, submit_events
from gateway.services.intake import _record
from gateway.store import outbox

__all__ = ["main"]


_MIXES: dict[str, tuple[tuple[msgs.EventSpec, int], ...]] = {
    "typical": ((msgs.EventSpec(5), 100),),
    "realistic": msgs.REQUEST_MIX,
    "50": ((msgs.EventSpec(50), 100),),
    "200": ((msgs.EventSpec(200), 100),),
    "1000": ((msgs.EventSpec(1000), 100),),
    "series": ((msgs.EventSpec(5, overrides=10), 100),),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    parser.add_argument("kind", choices=("request", "reply"))
    parser.add_argument("-n", type=int, default=400)
    parser.add_argument(
        "--mix",
        choices=("typical", "realistic", "50", "200", "1000", "series"),
        default="typical",
        help="typical: 5 attendees; realistic: the bench mix; 50/200/1000 attendees;"
        " series: weekly with 10 overrides",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="imip-inproc-"))
    try:
        config = GatewayConfig(workdir, relay_port=9)
        config.write()
        config.cli("db", "upgrade")
        now = msgs.now_utc()
        if args.kind == "request":
            mix = _MIXES[args.mix]
            batch = msgs.request_workload(args.n, run_id="ip", now=now, mix=mix)
        else:
            batch, events = msgs.reply_workload(args.n, run_id="ip", now=now)
            submit_events(config.path, config.database_url, "ip", events.items(), now)
        services = open_services(config.path)
        store = services.store
        proc = services.processor
        clock = services.clock
        profiler = cProfile.Profile() if args.profile else None

        def cpu() -> float:
            return time.process_time()

        if profiler:
            profiler.enable()
        t0 = cpu()
        for m in batch:
            store.run_sync(
                _record,
                m.data,
                message_id=None,
                source="smtp",
                envelope_from=m.mail_from,
                envelope_to=[m.rcpt_to],
                now=clock(),
            )
        t1 = cpu()
        done = 0
        locked = 0.0  # CPU inside process_batch: the SQLite write lock is held
        while True:
            ids = store.run_sync(proc.claim, clock(), 16)
            if not ids:
                break
            # As the worker does: extract and parse before the write transaction.
            prepared = store.read_sync(proc.prepare_claimed, ids)
            remaining = list(ids)
            while remaining:
                started = cpu()
                items = store.run_sync(proc.process_batch, remaining, clock(), 0.02, prepared)
                locked += cpu() - started
                got = {i.journal_id for i in items}
                remaining = [i for i in remaining if i not in got]
                done += len(items)
        t2 = cpu()
        sent = 0
        while True:
            due = store.run_sync(
                outbox.claim_due, now=clock(), lease_owner="inproc", limit=16, lease_seconds=60.0
            )
            if not due:
                break
            for row in due:
                store.run_sync(outbox.mark_sent, row.id, clock(), lease_owner="inproc")
                sent += 1
        t3 = cpu()
        if profiler:
            profiler.disable()
        n = len(batch)
        print(
            f"{args.kind} x{n} ({args.mix}): intake {(t1 - t0) / n * 1e6:.0f} us/msg,"
            f" processing {(t2 - t1) / n * 1e6:.0f} us/msg ({done} rows;"
            f" {locked / n * 1e6:.0f} of them in the write transaction),"
            f" outbox {(t3 - t2) / max(1, sent) * 1e6:.0f} us/mail ({sent} mails),"
            f" total {(t3 - t0) / n * 1e6:.0f} us/msg"
        )
        services.close()
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
