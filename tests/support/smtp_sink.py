"""A scriptable SMTP server on a free port that records what it receives.

It stands in for the relay (smarthost) in tests and benchmarks: a real aiosmtpd server
on real sockets, whose replies can be scripted per DATA and per RCPT::

    async with SmtpSink() as sink:                       # 127.0.0.1, port 0
        sink.script_data("451 4.3.0 busy", "250 2.0.0 ok")  # then the default 250
        ...send to ("127.0.0.1", sink.port)...
        await sink.wait_for_messages(1)
        assert sink.messages[0].rcpt_tos == ["bob@example.net"]

* ``messages``: the transactions the sink *accepted* (2xx after DATA), in order;
* ``attempts``: every completed DATA, with the reply it got (accepted or not);
* ``connections``: how many TCP connections were opened; every recorded message
  carries the number of its connection, so a test can prove connection reuse;
* ``commands``: (connection, verb) of every MAIL/RCPT/RSET/NOOP/QUIT seen;
* ``hold()``/``release()``: a slow relay; the DATA reply waits until released;
* ``drop_connections()``: a relay restart (pooled client sessions die);
* TLS: ``tls=("starttls"|"implicit", cert, key)``; AUTH: ``users={"name": "password"}``
  (then AUTH is required before MAIL).

:func:`self_signed_cert` makes a certificate for ``localhost`` and ``127.0.0.1`` with
the ``openssl`` binary, for TLS tests on both sides.  :class:`SmtpDialog` is a raw
line-level SMTP/LMTP client (exact replies, LMTP's one reply per recipient), and
:class:`RunningInBackground` runs any daemon ``Runnable`` for the body of a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ssl
import subprocess
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

__all__ = [
    "Attempt",
    "ReceivedMessage",
    "RunningInBackground",
    "SmtpDialog",
    "SmtpSink",
    "openssl_available",
    "self_signed_cert",
]

DEFAULT_DATA_REPLY = "250 2.0.0 Ok: stored by sink"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One mail transaction that reached the end of DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int  # 1-based number of the TCP connection it arrived on
    login: str | None  # AUTH user, if the session authenticated
    tls: bool  # the session was encrypted (STARTTLS or implicit)


@dataclass(frozen=True, slots=True)
class Attempt:
    """A completed DATA and the reply the sink gave it."""

    message: ReceivedMessage
    reply: str

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")


class _SinkSMTP(SMTP):
    def __init__(self, handler: Any, *, connection: int, implicit_tls: bool, **kw: Any) -> None:
        self.connection_number = connection
        self.implicit_tls = implicit_tls
        super().__init__(handler, **kw)


@dataclass
class SmtpSink:
    """See the module docstring."""

    host: str = "127.0.0.1"
    default_data_reply: str = DEFAULT_DATA_REPLY
    # addr -> reply for RCPT (None: accept).  Scripted replies below win over it.
    rcpt_reply: Callable[[str], str | None] | None = None
    tls: tuple[Literal["starttls", "implicit"], Path, Path] | None = None
    users: Mapping[str, str] = field(default_factory=dict)

    messages: list[ReceivedMessage] = field(default_factory=list, init=False)
    attempts: list[Attempt] = field(default_factory=list, init=False)
    commands: list[tuple[int, str]] = field(default_factory=list, init=False)
    connections: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._data_script: deque[str] = deque()
        self._rcpt_script: deque[str] = deque()
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        self._changed = asyncio.Condition()
        self._open: set[_SinkSMTP] = set()
        self._released = asyncio.Event()
        self._released.set()
        self.held = 0

    # -- scripting -------------------------------------------------------------------------

    def script_data(self, *replies: str) -> None:
        """Reply to the next DATA transactions with these, then the default again."""
        self._data_script.extend(replies)

    def script_rcpt(self, *replies: str) -> None:
        """Reply to the next RCPT commands with these (``"250 ..."`` accepts)."""
        self._rcpt_script.extend(replies)

    def hold(self) -> None:
        """Keep every completed DATA waiting for its reply until :meth:`release`.

        Simulates a slow relay: the client has sent the whole message and waits.
        :meth:`wait_for_held` tells when a transaction is being held.
        """
        self._released.clear()

    def release(self) -> None:
        """Answer the held transactions (and stop holding new ones)."""
        self._released.set()

    async def wait_for_held(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until at least ``count`` transactions are being held."""
        await self._wait(lambda: self.held >= count, timeout)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sink is not running")
        return self._port

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        mode = None
        if self.tls is not None:
            mode, cert, key = self.tls
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(cert), str(key))
        implicit = mode == "implicit"

        def factory() -> _SinkSMTP:
            self.connections += 1
            kwargs: dict[str, Any] = {}
            if self.users:
                kwargs["authenticator"] = self._authenticate
                kwargs["auth_required"] = True
                # Under implicit TLS aiosmtpd does not know the session is encrypted.
                kwargs["auth_require_tls"] = not implicit and context is not None
            with warnings.catch_warnings():
                # AUTH without aiosmtpd's notion of TLS is deliberate under implicit TLS.
                warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring")
                server = _SinkSMTP(
                    _SinkHandler(self),
                    connection=self.connections,
                    implicit_tls=implicit,
                    hostname="sink.test",
                    tls_context=None if implicit else context,
                    data_size_limit=None,
                    loop=loop,
                    **kwargs,
                )
            self._open.add(server)
            return server

        self._server = await loop.create_server(
            factory, self.host, 0, ssl=context if implicit else None
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for server in list(self._open):
            if server.transport is not None:
                server.transport.close()
        self._open.clear()
        await asyncio.sleep(0)
        self._server = None
        self._port = None

    async def drop_connections(self) -> None:
        """Close every client connection abruptly (a relay restart, an idle timeout)."""
        for server in list(self._open):
            if server.transport is not None:
                server.transport.close()
        self._open.clear()
        await asyncio.sleep(0)

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages were accepted; return them."""
        await self._wait(lambda: len(self.messages) >= count, timeout)
        return list(self.messages)

    async def wait_for_attempts(self, count: int, timeout: float = 10.0) -> list[Attempt]:
        """Wait until at least ``count`` DATA transactions completed (any reply)."""
        await self._wait(lambda: len(self.attempts) >= count, timeout)
        return list(self.attempts)

    async def _wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _hold_if_asked(self) -> None:
        if self._released.is_set():
            return
        self.held += 1
        async with self._changed:
            self._changed.notify_all()
        try:
            await self._released.wait()
        finally:
            self.held -= 1

    async def _record(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)
        if attempt.accepted:
            self.messages.append(attempt.message)
        async with self._changed:
            self._changed.notify_all()

    # -- hooks -----------------------------------------------------------------------------

    def _authenticate(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self.users.get(auth_data.login.decode())
        ok = expected is not None and hmac.compare_digest(expected.encode(), auth_data.password)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _next_rcpt_reply(self, address: str) -> str | None:
        if self._rcpt_script:
            return self._rcpt_script.popleft()
        return self.rcpt_reply(address) if self.rcpt_reply is not None else None

    def _next_data_reply(self) -> str:
        return self._data_script.popleft() if self._data_script else self.default_data_reply


class _SinkHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    def _note(self, server: SMTP, verb: str) -> None:
        assert isinstance(server, _SinkSMTP)
        self.sink.commands.append((server.connection_number, verb))

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self._note(server, "MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        self._note(server, "RCPT")
        reply = self.sink._next_rcpt_reply(address)
        if reply is None or reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            return reply or "250 2.1.5 Ok"
        return reply

    async def handle_RSET(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        self._note(server, "RSET")
        return "250 2.0.0 Ok"

    async def handle_NOOP(
        self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope, arg: str
    ) -> str:
        self._note(server, "NOOP")
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        self._note(server, "QUIT")
        return "221 2.0.0 Bye"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        assert isinstance(server, _SinkSMTP)
        login = None
        auth_data: object = getattr(session, "auth_data", None)
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode()
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(envelope.original_content or b""),
            connection=server.connection_number,
            login=login,
            tls=server.implicit_tls or session.ssl is not None,
        )
        await self.sink._hold_if_asked()
        reply = self.sink._next_data_reply()
        await self.sink._record(Attempt(message=message, reply=reply))
        return reply


def self_signed_cert(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """Create ``cert.pem``/``key.pem`` for ``localhost`` and 127.0.0.1 in ``directory``."""
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name},IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def openssl_available() -> bool:
    """Whether :func:`self_signed_cert` can work here."""
    try:
        subprocess.run(["openssl", "version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def accepted_recipients(messages: Iterable[ReceivedMessage]) -> list[str]:
    """All recipients of ``messages``, in order (a convenience for assertions)."""
    return [rcpt for message in messages for rcpt in message.rcpt_tos]


class SmtpDialog:
    """A raw SMTP/LMTP client over a real socket, for tests that check exact replies.

    ``smtplib`` hides LMTP's per-recipient replies (RFC 2033 section 4.2) and stops at
    the first error; this client sends a line and returns the reply lines verbatim.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: list[str] = []

    @classmethod
    async def open(cls, host: str, port: int) -> SmtpDialog:
        reader, writer = await asyncio.open_connection(host, port)
        dialog = cls(reader, writer)
        dialog.greeting = await dialog.reply()
        return dialog

    async def reply(self, timeout: float = 10.0) -> list[str]:
        """One (possibly multi-line, RFC 5321 section 4.2.1) reply."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"connection closed after {lines!r}")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def command(self, line: str) -> list[str]:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send_data(self, data: bytes, replies: int = 1) -> list[str]:
        """Send the message body (dot-stuffed here) and read ``replies`` final replies."""
        body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        stuffed = b"\r\n".join(
            b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n")
        )
        self.writer.write(stuffed + b".\r\n")
        await self.writer.drain()
        out: list[str] = []
        for _ in range(replies):
            out.extend(await self.reply())
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


class RunningInBackground:
    """Run a daemon ``Runnable`` (``run(stopping)``) as a task for the body of a test.

    ``async with RunningInBackground(listener) as stopping: ...``; leaving sets
    ``stopping`` and waits for ``run`` to return, re-raising its error.
    """

    def __init__(self, runnable: Any, ready: asyncio.Event | None = None) -> None:
        self.runnable = runnable
        self.ready = ready
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> asyncio.Event:
        self.task = asyncio.create_task(self.runnable.run(self.stopping))
        if self.ready is not None:
            ready_wait = asyncio.ensure_future(self.ready.wait())
            done, _ = await asyncio.wait(
                {ready_wait, self.task}, timeout=10, return_when=asyncio.FIRST_COMPLETED
            )
            if self.task in done:
                ready_wait.cancel()
                self.task.result()  # raises the start-up error
            if ready_wait not in done:
                raise TimeoutError("the runnable did not become ready")
        return self.stopping

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 30)
