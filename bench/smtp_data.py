"""Server CPU per message of the SMTP/LMTP listener's DATA phase, over a real socket.

``python -m bench.smtp_data [-n N] [--size BYTES] [--connections C] [--lmtp]``

The gateway's :class:`~gateway.transports.smtp.SmtpListener` runs in a child process
with an intake that only counts messages (no journal), so what is measured is the
protocol work: command parsing, reading DATA, dot-unstuffing and the replies.  The
parent drives ``C`` connections with pre-built, pipelined-per-transaction SMTP dialogue
on plain sockets (cheap on the client side) and the child reports its own CPU time
(``time.process_time``) from the first to the last message.  The body is a bench iMIP
REPLY mail padded to ``--size`` bytes with text lines, some of them starting with a dot
(so dot-stuffing is exercised).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import threading
import time
from multiprocessing.connection import Connection

from bench import messages as msgs
from gateway.services.ports import Accepted, Envelope
from gateway.transports.smtp import ListenerOptions, SmtpListener

__all__ = ["main"]


class _CountingIntake:
    """Accepts every message at once and records the CPU time at the first and last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.done = asyncio.Event()
        self.cpu = 0.0

    async def accept(self, raw: bytes, envelope: Envelope) -> Accepted:
        self.count += 1
        if self.count == 1:
            self.first = time.process_time()
        if self.count == self.expected:
            self.cpu = time.process_time() - self.first
            self.done.set()
        return Accepted(journal_id=self.count, duplicate=False)


def _serve(protocol: str, expected: int, pipe: Connection) -> None:
    async def run() -> None:
        intake = _CountingIntake(expected)
        listener = SmtpListener(
            ListenerOptions(port=0, max_message_bytes=50 * 1024 * 1024, hostname="bench"),
            intake,
            lambda _addr: True,
            protocol="smtp" if protocol == "smtp" else "lmtp",
        )
        stopping = asyncio.Event()
        task = asyncio.create_task(listener.run(stopping))
        await listener.ready.wait()
        pipe.send(listener.port)
        await intake.done.wait()
        # The first message's CPU is not counted; scale to a per-message figure.
        pipe.send(intake.cpu / max(1, expected - 1))
        stopping.set()
        await task

    asyncio.run(run())


def _body(size: int) -> bytes:
    now = msgs.now_utc()
    batch, _events = msgs.reply_workload(1, run_id="sd", now=now)
    data = batch[0].data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    filler: list[bytes] = []
    n = 0
    while len(data) + sum(len(x) for x in filler) < size:
        # Every fifth line starts with a dot: the client must stuff it (RFC 5321 4.5.2).
        lead = "." if n % 5 == 0 else ""
        filler.append(f"{lead}padding line {n:06d} of the DATA benchmark body text\r\n".encode())
        n += 1
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b"".join(filler)


def _stuff(body: bytes) -> bytes:
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def _client(port: int, count: int, payload: bytes, lmtp: bool) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        reader = sock.makefile("rb")

        def reply() -> bytes:
            while True:
                line = reader.readline()
                if not line:
                    raise ConnectionError("server closed the connection")
                if line[3:4] != b"-":
                    return line

        reply()  # greeting
        sock.sendall(b"LHLO bench\r\n" if lmtp else b"EHLO bench\r\n")
        reply()
        for _ in range(count):
            sock.sendall(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<bob@bench.example>\r\nDATA\r\n")
            for _ in range(3):
                reply()
            sock.sendall(payload)
            status = reply()
            if not status.startswith(b"250"):
                raise RuntimeError(f"unexpected reply {status!r}")
        sock.sendall(b"QUIT\r\n")
        reply()


def measure(n: int, size: int, connections: int, lmtp: bool) -> float:
    """Server CPU microseconds per message for one run."""
    payload = _stuff(_body(size)) + b".\r\n"
    parent, child = multiprocessing.Pipe()
    total = n * connections
    proc = multiprocessing.Process(
        target=_serve, args=("lmtp" if lmtp else "smtp", total, child), daemon=True
    )
    proc.start()
    try:
        port = parent.recv()
        threads = [
            threading.Thread(target=_client, args=(port, n, payload, lmtp))
            for _ in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        per_message = float(parent.recv())
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    return per_message * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.smtp_data")
    parser.add_argument("-n", type=int, default=500, help="messages per connection")
    parser.add_argument("--size", type=int, default=6000, help="body size in bytes")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--lmtp", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    runs = [measure(args.n, args.size, args.connections, args.lmtp) for _ in range(args.repeat)]
    print(
        f"{'lmtp' if args.lmtp else 'smtp'} DATA, {args.size} bytes x{args.n * args.connections}"
        f" over {args.connections} connection(s): server CPU"
        f" {statistics.median(runs):.0f} us/msg (median of {args.repeat}:"
        f" {', '.join(f'{r:.0f}' for r in runs)})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
