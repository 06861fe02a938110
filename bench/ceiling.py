"""The ceiling: a do-nothing aiosmtpd server, run in its own process.

Its handler answers ``250`` after DATA and keeps nothing, so what it measures is the
cost of aiosmtpd's SMTP front (reading DATA line by line, issue 5) on this machine.
No gateway can accept mail faster than the SMTP front it is built on; every gateway
throughput in the table is divided by this number measured on the same client load.

Run: ``python -m bench.ceiling`` prints ``READY <port>`` on stdout and serves on
127.0.0.1 until SIGTERM/SIGINT, then prints ``DONE <messages>`` and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from aiosmtpd.smtp import SMTP

__all__ = ["main"]


class _Handler:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 2.0.0 Ok: discarded"


async def _serve(host: str, port: int) -> int:
    loop = asyncio.get_running_loop()
    handler = _Handler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="ceiling.bench", data_size_limit=None, loop=loop),
        host,
        port,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await stop.wait()
    server.close()
    return handler.count


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 0
    count = asyncio.run(_serve("127.0.0.1", port))
    print(f"DONE {count}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
