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

from aiosmtpd.smtp import SMTP

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
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        data = bytes(envelope.original_content or envelope.content or b"")
        mid, irt = header_ids(data)
        self.out.write(
            json.dumps(
                {
                    "t": now,
                    "mid": mid,
                    "irt": irt,
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "size": len(data),
                    # The client's port: distinct values = connections the relay opened.
                    "peer": (session.peer or ("", 0))[1],
                }
            )
            + "\n"
        )
        self.out.flush()
        self.count += 1
        return "250 2.0.0 Ok: recorded by the bench sink"


async def _serve(record: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    # Opened once at start-up, before serving: a blocking open here stalls nothing.
    with open(record, "a", encoding="utf-8") as out:  # noqa: ASYNC230
        recorder = _Recorder(out)
        server = await loop.create_server(
            lambda: SMTP(recorder, hostname="sink.bench", data_size_limit=None, loop=loop),
            "127.0.0.1",
            port,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        await stop.wait()
        server.close()
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
