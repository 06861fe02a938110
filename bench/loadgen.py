"""The load generator: C concurrent SMTP connections send N prepared messages.

Run in its own process (``python -m bench.loadgen JOB.json``) so its CPU is visible
and separate from the server under test; the two cores of the machine are shared, so
the client is kept lean: messages are dot-stuffed and encoded up front, the dialogue
is a raw asyncio stream (no SMTP library), one EHLO per connection, no TLS.

Per message it records when MAIL FROM was written and when the final reply to the
data (the ``250`` after the end-of-data dot, RFC 5321 section 4.1.1.4) arrived, both
as ``time.time()`` (the clock the sink stamps arrivals with).  With ``rate`` > 0 the
messages are released on a fixed schedule (message i not before start + i/rate), which
is how latency is measured below saturation; with 0 every connection sends back to
back.  Bounded in count (the prepared list) and time (``time_limit``): whatever is
not sent when the limit strikes is reported as not sent.  Loopback only.

Job file: ``{"host", "port", "connections", "rate", "time_limit", "messages": PICKLE,
"out": JSON}``; the pickle holds ``[(mail_from, rcpt_to, message_id, data), ...]``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pickle
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Prepared", "main", "prepare", "run_load"]

Prepared = tuple[bytes, bytes, str, bytes]  # MAIL FROM line, RCPT TO line, Message-ID, data


def prepare(mail_from: str, rcpt_to: str, message_id: str, data: bytes) -> Prepared:
    """The two envelope command lines and the dot-stuffed data ending in CRLF.CRLF."""
    body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if b"\r\n." in body or body.startswith(b"."):
        # RFC 5321 section 4.5.2: a line starting with "." gets one more.
        body = (b"." if body.startswith(b".") else b"") + body.replace(b"\r\n.", b"\r\n..")
    return (
        f"MAIL FROM:<{mail_from}> SIZE={len(body)}\r\n".encode(),
        f"RCPT TO:<{rcpt_to}>\r\n".encode(),
        message_id,
        body + b".\r\n",
    )


@dataclass
class _Shared:
    messages: list[Prepared]
    next_index: Iterator[int]
    start: float
    rate: float
    deadline: float
    results: list[tuple[str, float, float, str] | None]


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if len(line) < 4 or line[3:4] != b"-":
            return line


async def _connection(host: str, port: int, shared: _Shared) -> int:
    reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    sent = 0
    try:
        await _reply(reader)  # 220 greeting
        writer.write(b"EHLO loadgen.bench\r\n")
        await _reply(reader)
        for index in shared.next_index:
            if index >= len(shared.messages):
                break
            if shared.rate > 0:
                due = shared.start + index / shared.rate
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.time() > shared.deadline:
                break
            mail, rcpt, message_id, data = shared.messages[index]
            began = time.time()
            writer.write(mail)
            code = await _reply(reader)
            if code.startswith(b"250"):
                writer.write(rcpt)
                code = await _reply(reader)
            if code.startswith(b"250"):
                writer.write(b"DATA\r\n")
                code = await _reply(reader)
                if code.startswith(b"354"):
                    writer.write(data)
                    code = await _reply(reader)
            else:
                writer.write(b"RSET\r\n")
                await _reply(reader)
            shared.results[index] = (message_id, began, time.time(), code.decode().strip())
            sent += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await _reply(reader)
    finally:
        writer.close()
    return sent


async def run_load(
    host: str,
    port: int,
    messages: list[Prepared],
    *,
    connections: int,
    rate: float = 0.0,
    time_limit: float = 600.0,
) -> dict[str, Any]:
    """Send ``messages`` over ``connections`` connections; return the measurements."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the load generator only targets loopback")
    start = time.time()
    shared = _Shared(
        messages=messages,
        next_index=itertools.count(),
        start=start,
        rate=rate,
        deadline=start + time_limit,
        results=[None] * len(messages),
    )
    cpu0 = os.times()
    outcomes = await asyncio.gather(
        *(_connection(host, port, shared) for _ in range(max(1, connections))),
        return_exceptions=True,
    )
    cpu1 = os.times()
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    done = [r for r in shared.results if r is not None]
    return {
        "start": start,
        "end": time.time(),
        "client_cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "sent": [list(r) for r in done],
        "unsent": len(messages) - len(done),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loadgen JOB.json", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as fh:
        job = json.load(fh)
    with open(job["messages"], "rb") as fh:
        messages: list[Prepared] = pickle.load(fh)  # our own file, written by bench.run
    result = asyncio.run(
        run_load(
            job["host"],
            int(job["port"]),
            messages,
            connections=int(job["connections"]),
            rate=float(job.get("rate", 0.0)),
            time_limit=float(job.get("time_limit", 600.0)),
        )
    )
    with open(job["out"], "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
