"""The sink relay: an aiosmtpd server in its own process that records every arrival.

The gateway's ``[relay]`` points here.  For each accepted message the sink appends one
JSON line to its record file, flushed at once so the benchmark can follow progress::

    {"t": 1732212345.123456, "mid": "<...>", "irt": "<...>", "from": "...",
     "to": ["..."], "size": 4711, "peer": 53412}

``t`` is ``time.time()`` when the end of DATA arrived (wall clock, the same clock the
load generator stamps its ``250`` with, so "end of DATA at the gateway -> reply accepted
by the sink" is a difference of two stamps).  ``irt`` (In-Reply-To) is how the
benchmark matches a reply to the invitation it answers and proves it arrived exactly
once.  Headers are found with a byte scan, not the email package, to keep the sink's
own CPU small: it shares the machine's two cores with the gateway under test.

The sink stands in for the operator's relay, which runs on another machine in
production, so its CPU here is overhead that only competes with the gateway.  It
therefore serves with the gateway's own SMTP front (:class:`SmtpListener`: DATA read
in chunks, about a quarter of stock aiosmtpd's CPU per message, see
``python -m bench.smtp_data``) instead of a stock aiosmtpd server.  The ceiling stays
the stock do-nothing aiosmtpd server the issue defines.

Run: ``python -m bench.sink RECORD_FILE`` prints ``READY <port>`` and serves on
127.0.0.1 until SIGTERM/SIGINT, then prints ``DONE <messages>``.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from typing import IO, Any

from gateway.services.ports import Accepted, Envelope
from gateway.transports.smtp import ListenerOptions, SmtpListener

__all__ = ["header_ids", "main"]

_HEADER = re.compile(rb"^(message-id|in-reply-to):[ \t]*(.*(?:\r?\n[ \t].*)*)", re.I | re.M)
_ID = re.compile(rb"<[^<>\s]+>")


def header_ids(data: bytes) -> tuple[str, str]:
    """(Message-ID, In-Reply-To) of a message, from its header block only."""
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    found: dict[bytes, str] = {}
    for match in _HEADER.finditer(head):
        ids = _ID.findall(match.group(2))
        found.setdefault(match.group(1).lower(), ids[0].decode("ascii", "replace") if ids else "")
    return found.get(b"message-id", ""), found.get(b"in-reply-to", "")


class _Recorder:
    """The listener's intake: one JSON line per message, then ``250``."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.count = 0

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        now = time.time()
        mid, irt = header_ids(raw)
        _host, _, port = envelope.peer.rpartition(":")
        self.out.write(
            json.dumps(
                {
                    "t": now,
                    "mid": mid,
                    "irt": irt,
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "size": len(raw),
                    # The client's port: distinct values = connections the relay opened.
                    "peer": int(port) if port.isdigit() else 0,
                }
            )
            + "\n"
        )
        self.out.flush()
        self.count += 1
        return Accepted(journal_id=self.count, duplicate=False)


async def _serve(record: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    # Opened once at start-up, before serving: a blocking open here stalls nothing.
    with open(record, "a", encoding="utf-8") as out:  # noqa: ASYNC230
        recorder = _Recorder(out)
        listener = SmtpListener(
            ListenerOptions(port=port, max_message_bytes=100 * 1024 * 1024, hostname="sink.bench"),
            recorder,
            lambda _address: True,  # a relay: every recipient is accepted
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(listener.run(stop))
        ready = asyncio.create_task(listener.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # start-up failed: raise it
        print(f"READY {listener.port}", flush=True)
        await task
        return recorder.count


def read_records(path: str) -> list[dict[str, Any]]:
    """Every record the sink wrote so far (a partial last line is skipped)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.endswith("\n"):
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m bench.sink RECORD_FILE [PORT]", file=sys.stderr)
        return 2
    count = asyncio.run(_serve(args[0], int(args[1]) if len(args) > 1 else 0))
    print(f"DONE {count}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
