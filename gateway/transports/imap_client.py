"""A small typed IMAP4rev1 client session over aioimaplib, for the IMAP poller.

aioimaplib (untyped) speaks the protocol; this module gives the poller the handful of
operations it needs with typed results, and closes three gaps of the library:

* **Dead connections.**  aioimaplib does not fail pending commands when the connection
  drops; they would wait for their timeout.  Every command here races the
  connection-lost callback, so a server that closes the socket is noticed at once, and
  every command has a deadline, so a server that vanished silently is noticed too.
  After any transport error or timeout the session is unusable (a late answer could be
  taken for the answer of the next command): the caller reconnects.
* **STARTTLS** (RFC 3501 section 6.2.1, RFC 2595): not offered by aioimaplib; done
  here with ``loop.start_tls`` on the existing transport, refusing to continue in clear
  text when the server does not offer it, and re-reading CAPABILITY afterwards as
  the RFC requires.
* **Mailbox names** are sent as quoted strings in modified UTF-7 (RFC 3501 section
  5.1.3); aioimaplib sends arguments verbatim.

Commands used: SELECT (RFC 3501 section 6.3.1, read UIDVALIDITY 2.3.1.1), UID SEARCH /
UID FETCH ``BODY.PEEK[]`` (6.4.4, 6.4.5 -- PEEK so that fetching never sets ``\\Seen``),
UID STORE (6.4.6), UID COPY (6.4.7), UID EXPUNGE (RFC 4315 UIDPLUS section 2.1), UID MOVE
(RFC 6851), IDLE / DONE (RFC 2177), NOOP (6.1.2), LOGOUT (6.1.3).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aioimaplib

__all__ = [
    "ImapClient",
    "ImapCommandError",
    "ImapConnectionError",
    "ImapError",
    "ImapTlsError",
    "SelectedMailbox",
    "TlsMode",
    "encode_mailbox",
]

log = logging.getLogger(__name__)

TlsMode = Literal["implicit", "starttls", "none"]
T = TypeVar("T")

# RFC 2177 section 3: re-issue IDLE at least every 29 minutes.  The poller re-issues it far
# more often (its liveness interval); this only keeps aioimaplib's own timer out of the way.
_IDLE_MAX_SECONDS = 29 * 60

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]", re.IGNORECASE)
_EXISTS = re.compile(rb"^(\d+) EXISTS\b", re.IGNORECASE)
_FETCH_UID = re.compile(rb"\bUID (\d+)\b", re.IGNORECASE)
_RESPONSE_CODE = re.compile(rb"^\[([A-Z-]+)", re.IGNORECASE)


class ImapError(Exception):
    """Base of the errors of this module."""


class ImapConnectionError(ImapError):
    """The connection failed, dropped, timed out or the dialogue went out of step.

    The session is unusable afterwards; reconnect.
    """


class ImapTlsError(ImapConnectionError):
    """TLS was required but the server does not offer it (or the handshake failed)."""


class ImapCommandError(ImapError):
    """The server answered ``NO`` or ``BAD`` to a command (the session is still usable)."""

    def __init__(self, command: str, result: str, text: str) -> None:
        self.command = command
        self.result = result
        self.text = text
        super().__init__(f"{command} failed: {result} {text}".strip())

    @property
    def code(self) -> str | None:
        """The response code (RFC 3501 section 7.1), e.g. ``TRYCREATE``, if any."""
        match = _RESPONSE_CODE.match(self.text.encode("utf-8", "replace"))
        return match.group(1).decode().upper() if match else None


@dataclass(frozen=True, slots=True)
class SelectedMailbox:
    """What SELECT told us about the mailbox."""

    name: str
    uidvalidity: int
    uidnext: int | None
    exists: int


def encode_mailbox(name: str) -> str:
    """``name`` as an IMAP quoted string in modified UTF-7 (RFC 3501 section 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            chunk = base64.b64encode(data).rstrip(b"=").replace(b"/", b",").decode("ascii")
            out.append(f"&{chunk}-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return str(aioimaplib.quoted("".join(out)))


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _lines(response: Any) -> list[bytes | bytearray]:
    return list(response.lines)


class ImapClient:
    """One authenticated-or-not IMAP connection.  Create with :meth:`connect`."""

    def __init__(self, imap: Any, lost: asyncio.Event, host: str, timeout: float) -> None:
        self._imap = imap
        self._lost = lost
        self._host = host
        self._timeout = timeout
        self._broken = False
        self._idle: asyncio.Future[Any] | None = None

    # -- connection ------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        tls: TlsMode,
        ssl_context: ssl.SSLContext | None = None,
        command_timeout: float = 30.0,
    ) -> ImapClient:
        """Open the connection, read the greeting, and upgrade it with STARTTLS if asked.

        ``ssl_context`` defaults to the system trust store with host name checking.
        """
        if tls != "none" and ssl_context is None:
            ssl_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        lost = asyncio.Event()

        def on_lost(exc: Exception | None) -> None:
            lost.set()

        imap = aioimaplib.IMAP4(
            host=host,
            port=port,
            timeout=command_timeout,
            conn_lost_cb=on_lost,
            ssl_context=ssl_context if tls == "implicit" else None,
        )
        client = cls(imap, lost, host, command_timeout)
        try:
            await client._call("greeting", imap.wait_hello_from_server())
            if tls == "starttls":
                assert ssl_context is not None
                await client._starttls(ssl_context)
        except BaseException:
            client.close()
            raise
        return client

    async def _starttls(self, context: ssl.SSLContext) -> None:
        if not self.has_capability("STARTTLS"):
            # Never fall back to clear text: the password would be sent in the open.
            raise ImapTlsError(f"{self._host} does not offer STARTTLS (RFC 3501 section 6.2.1)")
        protocol = self._imap.protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await self._call("STARTTLS", protocol.execute(command))
        self._check("STARTTLS", response)
        loop = asyncio.get_running_loop()
        try:
            transport = await asyncio.wait_for(
                loop.start_tls(protocol.transport, protocol, context, server_hostname=self._host),
                self._timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._broken = True
            raise ImapTlsError(f"TLS handshake with {self._host} failed: {exc}") from exc
        protocol.transport = transport
        # RFC 3501 section 6.2.1: forget the capabilities learnt before TLS.
        await self._call("CAPABILITY", protocol.capability())

    @property
    def usable(self) -> bool:
        return not (self._broken or self._lost.is_set())

    @property
    def lost(self) -> asyncio.Event:
        """Set when the server closed the connection."""
        return self._lost

    def has_capability(self, name: str) -> bool:
        wanted = name.upper()
        return any(str(cap).upper() == wanted for cap in self._imap.protocol.capabilities)

    async def _call(self, what: str, awaitable: Awaitable[T], limit: float | None = None) -> T:
        """Await ``awaitable`` unless the connection drops or ``limit`` seconds pass first.

        ``limit`` defaults to the command timeout given to :meth:`connect`.
        """
        if not self.usable:
            self._discard(awaitable)
            raise ImapConnectionError(f"{what}: the connection is closed")
        task: asyncio.Future[T] = asyncio.ensure_future(awaitable)
        lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost},
                timeout=self._timeout if limit is None else limit,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            task.cancel()
            self._broken = True
            raise
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            self._broken = True
            if self._lost.is_set():
                raise ImapConnectionError(f"{what}: the server closed the connection")
            raise ImapConnectionError(f"{what}: no answer within the timeout")
        try:
            return task.result()
        except (OSError, TimeoutError, aioimaplib.AioImapException) as exc:
            # Refused, reset, aioimaplib's own timeout, or a reply out of step with our
            # commands: the dialogue cannot be trusted any more.
            self._broken = True
            reason = str(exc) or type(exc).__name__
            raise ImapConnectionError(f"{what}: {reason}") from exc

    @staticmethod
    def _discard(awaitable: Awaitable[Any]) -> None:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()

    @staticmethod
    def _check(command: str, response: Any) -> None:
        if response.result != "OK":
            lines = _lines(response)
            text = _text(lines[-1]) if lines else ""
            raise ImapCommandError(command, str(response.result), text)

    # -- commands --------------------------------------------------------------------------

    async def login(self, username: str, password: str) -> None:
        # aioimaplib quotes the password but sends the user name verbatim; a quoted string
        # is always a valid astring (RFC 3501 section 9), whatever the name contains.
        try:
            response = await self._call(
                "LOGIN", self._imap.login(aioimaplib.quoted(username), password)
            )
        except ImapConnectionError as exc:
            # aioimaplib puts the command, password included, in some error texts.
            if password and password in str(exc):
                raise ImapConnectionError(str(exc).replace(password, "*****")) from None
            raise
        self._check("LOGIN", response)
        # The capabilities change after login (RFC 3501 section 7.2.1); ask again rather
        # than trust aioimaplib's parse of the response code.
        await self._call("CAPABILITY", self._imap.protocol.capability())

    async def select(self, mailbox: str) -> SelectedMailbox:
        response = await self._call("SELECT", self._imap.select(encode_mailbox(mailbox)))
        self._check("SELECT", response)
        uidvalidity: int | None = None
        uidnext: int | None = None
        exists = 0
        for line in _lines(response):
            raw = bytes(line)
            if (match := _UIDVALIDITY.search(raw)) is not None:
                uidvalidity = int(match.group(1))
            elif (match := _UIDNEXT.search(raw)) is not None:
                uidnext = int(match.group(1))
            elif (match := _EXISTS.match(raw)) is not None:
                exists = int(match.group(1))
        if uidvalidity is None:
            # RFC 3501 section 6.3.1 makes UIDVALIDITY mandatory; without it no UID we
            # remember can be trusted.
            raise ImapCommandError("SELECT", "NO", f"{mailbox}: the server sent no UIDVALIDITY")
        return SelectedMailbox(mailbox, uidvalidity, uidnext, exists)

    async def uids_from(self, first_uid: int) -> list[int]:
        """UIDs >= ``first_uid``, ascending.

        ``UID SEARCH UID n:*`` always matches the highest UID even when it is below
        ``n`` (RFC 3501 section 6.4.8: ``*`` is the largest UID in use, and ``n:*`` is the
        same range as ``*:n``), so the result is filtered here.
        """
        response = await self._call(
            "UID SEARCH", self._imap.uid_search("UID", f"{first_uid}:*", charset=None)
        )
        self._check("UID SEARCH", response)
        lines = _lines(response)
        uids: set[int] = set()
        for line in lines[:-1]:  # the last line is the tagged completion text
            uids.update(int(tok) for tok in bytes(line).split() if tok.isdigit())
        return sorted(uid for uid in uids if uid >= first_uid)

    async def fetch_message(self, uid: int) -> bytes | None:
        """The raw bytes of message ``uid`` (``BODY.PEEK[]``), or ``None`` if it is gone."""
        response = await self._call(
            "UID FETCH", self._imap.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        )
        self._check("UID FETCH", response)
        lines = _lines(response)
        for index, line in enumerate(lines[:-1]):
            if isinstance(line, bytearray):
                continue
            # "<seq> FETCH (UID <uid> BODY[] {<size>}" followed by the literal.  An
            # unsolicited FETCH about another message (a flag change) may be mixed in.
            match = _FETCH_UID.search(line)
            if b"BODY[]" not in line.upper() or (match and int(match.group(1)) != uid):
                continue
            following = lines[index + 1] if index + 1 < len(lines) else None
            if isinstance(following, bytearray):
                return bytes(following)
            if line.upper().endswith(b"BODY[] NIL"):
                return None
        return None

    async def add_flags(self, uid: int, *flags: str) -> None:
        response = await self._call(
            "UID STORE",
            self._imap.uid("store", str(uid), "+FLAGS.SILENT", f"({' '.join(flags)})"),
        )
        self._check("UID STORE", response)

    async def move(self, uid: int, mailbox: str) -> None:
        """UID MOVE (RFC 6851)."""
        response = await self._call(
            "UID MOVE", self._imap.uid("move", str(uid), encode_mailbox(mailbox))
        )
        self._check("UID MOVE", response)

    async def copy(self, uid: int, mailbox: str) -> None:
        response = await self._call(
            "UID COPY", self._imap.uid("copy", str(uid), encode_mailbox(mailbox))
        )
        self._check("UID COPY", response)

    async def uid_expunge(self, uid: int) -> None:
        """UID EXPUNGE (RFC 4315 section 2.1): expunge only this message."""
        response = await self._call("UID EXPUNGE", self._imap.uid("expunge", str(uid)))
        self._check("UID EXPUNGE", response)

    async def create(self, mailbox: str) -> None:
        """CREATE ``mailbox``; an existing mailbox is not an error."""
        response = await self._call("CREATE", self._imap.create(encode_mailbox(mailbox)))
        if response.result != "OK":
            error = ImapCommandError("CREATE", str(response.result), _text(_lines(response)[-1]))
            if error.code == "ALREADYEXISTS":
                return
            raise error

    async def noop(self, limit: float | None = None) -> list[bytes]:
        """NOOP; returns the untagged responses it collected (e.g. ``b"3 EXISTS"``)."""
        response = await self._call("NOOP", self._imap.noop(), limit)
        self._check("NOOP", response)
        return [bytes(line) for line in _lines(response)[:-1]]

    async def idle(
        self, max_seconds: float, stopping: asyncio.Event, done_timeout: float
    ) -> list[bytes]:
        """One IDLE round (RFC 2177): wait for a server push, ``stopping`` or ``max_seconds``.

        Always ends the IDLE with DONE and waits (at most ``done_timeout``) for its tagged
        completion: that round trip is the liveness proof of a quiet connection.  Returns
        the pushed untagged responses (``b"4 EXISTS"``...), possibly none.
        """
        queue: asyncio.Queue[list[bytes]] = self._imap.protocol.idle_queue
        while not queue.empty():  # pushes from an earlier round are stale: we re-sync anyway
            queue.get_nowait()
        idle: asyncio.Future[Any] = await self._call(
            "IDLE", self._imap.idle_start(timeout=_IDLE_MAX_SECONDS)
        )
        self._idle = idle
        pushed: list[bytes] = []
        push: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
        stop: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait(
                {push, stop, lost, idle}, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (push, stop, lost):
                waiter.cancel()
        if push in done and not push.cancelled():
            pushed = [bytes(line) for line in push.result() if isinstance(line, bytes | bytearray)]
        if self._lost.is_set():
            self._broken = True
            raise ImapConnectionError("IDLE: the server closed the connection")
        if idle.done():
            # The server ended the IDLE itself (BYE, or an error): the session is over.
            self._broken = True
            raise ImapConnectionError("IDLE: the server ended the IDLE command")
        self._imap.idle_done()
        response = await self._call("DONE", idle, done_timeout)
        self._idle = None
        self._check("IDLE", response)
        return pushed

    async def logout(self, limit: float = 5.0) -> None:
        """LOGOUT politely; any failure just means the connection is already gone."""
        if not self.usable:
            return
        with contextlib.suppress(ImapError):
            await self._call("LOGOUT", self._imap.logout(), limit)

    def close(self) -> None:
        """Drop the connection and every pending aioimaplib task."""
        self._broken = True
        protocol = self._imap.protocol
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.close()
        pending: Iterable[asyncio.Future[Any]] = [
            *list(getattr(self._imap, "tasks", ())),
            *list(getattr(protocol, "tasks", ())),
        ]
        for task in pending:
            task.cancel()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        # aioimaplib's 29-minute IDLE re-arm timer would keep this session alive.
        idle_timer = getattr(self._imap, "_idle_waiter", None)
        if idle_timer is not None:
            idle_timer.cancel()
        client_task = getattr(self._imap, "_client_task", None)
        if client_task is not None and not client_task.done():
            client_task.cancel()
