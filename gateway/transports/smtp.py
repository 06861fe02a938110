"""SMTP and LMTP listeners (aiosmtpd) that answer 250 only once a message is durable.

An MTA (Postfix ``transport``/``content_filter``, Exim ``smtp``/``lmtp`` transport)
delivers to these listeners.  The protocol work is aiosmtpd's; the decisions are ours:

* **No open relay.**  ``RCPT`` is accepted only for local users and their aliases
  (``is_local``); anything else gets ``550 5.1.1 <addr>: recipient not local``
  (RFC 5321 section 4.2.2 / RFC 3463 X.1.1).
* **Accepted means durable** (RFC 5321 section 4.2.5, ARCHITECTURE.md section 6): the
  final ``250`` is sent only after :meth:`~gateway.services.ports.Intake.accept` returned,
  i.e. after the raw bytes and envelope were committed to the journal.  A journal that
  cannot be written answers ``451 4.3.0 Try again later`` and the MTA keeps the message.
* **Never a 5xx with a stack trace.**  aiosmtpd answers an exception in a handler with
  ``500 Error: (ExcType) text`` by default; our handler's ``handle_exception`` logs the
  error and answers ``451 4.3.0`` instead, and an exception escaping the DATA hook is
  caught by the server class so the transaction is reset cleanly.
* **Size limit.**  ``SIZE`` is advertised (RFC 1870) and checked at ``MAIL`` and while the
  data arrives; both refusals read ``552 5.3.4 Message too big`` (RFC 3463 X.3.4).
* **LMTP answers per recipient** (RFC 2033 section 4.2): after the final dot the server
  returns one reply for each accepted ``RCPT``, in order.  aiosmtpd's ``LMTP`` replies
  once, so :class:`_GatewayLMTP` repeats the final reply for every accepted recipient.
  The journal commit is one transaction for all recipients, so they all share one
  outcome: every recipient gets 250 after the commit, or every one gets 451.
* **Duplicates.**  The journal recognises a redelivery (same Message-ID and bytes, e.g.
  an MTA retrying after our 250 was lost): the client gets 250 again, the message is not
  processed twice.  For that reason no ``Received:`` trace header is added here: the
  journal keeps the exact bytes the MTA sent, and a timestamped header would make every
  retry look new.
* **STARTTLS** (RFC 3207) when a certificate and key are configured; ``require_tls``
  refuses mail commands before it.  **AUTH** PLAIN/LOGIN (RFC 4954) against the
  configured users; when users are configured, AUTH is required before ``MAIL``, and
  when TLS is configured AUTH is only offered after STARTTLS.

Content-filter mode (Postfix ``content_filter``, Exim transport filter)
-----------------------------------------------------------------------
With ``content_filter`` the listener is an after-queue filter: clients that may relay
(AUTH, or an address in ``relay_trusted_networks`` - in practice the MTA on loopback)
may name any recipient; the message is journaled with ``source="filter"`` and, in the
same commit, queued unchanged for every recipient towards the relay (the MTA's
re-injection port).  Calendar parts are processed for the local users among the
recipients as usual.  Clients that may not relay get the normal local-only checks.

Outbound relay mode (the hook for local organisers)
---------------------------------------------------
With ``relay_mode`` a local organiser's client may submit its own scheduling mail
(REQUEST, CANCEL, ADD, PUBLISH to remote attendees) through the gateway.  A ``RCPT`` to a
remote address is accepted only when all of these hold:

1. the listener has ``relay_mode`` enabled;
2. the envelope sender is a local user (``is_local(mail_from)``);
3. the session is authenticated (AUTH) **or** the client's address lies in one of
   ``relay_trusted_networks`` (empty by default: loopback is *not* trusted implicitly,
   since on a shared host any local process could then send as any organiser).

Otherwise a remote ``RCPT`` is refused with ``550 5.7.1 <addr>: relay access denied``
(when relaying could have been allowed) or ``550 5.1.1 <addr>: recipient not local``.
Such a message is journaled with ``source="relay"``, the remote recipients in
``Envelope.rcpt_tos`` and the AUTH login in ``Envelope.extra["auth_user"]``; the ingest
service then records the organiser copy and enqueues the unchanged bytes for the relay
(RFC 6047 section 3: the iMIP message itself is forwarded, not re-composed).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import socket
import ssl
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AnyStr, Literal

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

from gateway.domain.addresses import normalise
from gateway.services.intake import MessageTooLarge
from gateway.services.ports import Envelope, Intake, TemporaryFailure

__all__ = [
    "REPLY_NOT_LOCAL",
    "REPLY_RELAY_DENIED",
    "REPLY_TOO_BIG",
    "REPLY_TRY_LATER",
    "ListenerOptions",
    "SmtpListener",
]

log = logging.getLogger(__name__)

REPLY_TRY_LATER = "451 4.3.0 Try again later"
REPLY_TOO_BIG = "552 5.3.4 Message too big"
REPLY_NOT_LOCAL = "550 5.1.1 <{addr}>: recipient not local"
REPLY_RELAY_DENIED = "550 5.7.1 <{addr}>: relay access denied"
REPLY_SHUTTING_DOWN = b"421 4.3.2 Service shutting down, closing transmission channel\r\n"

# aiosmtpd's own wording for size refusals, replaced by enhanced status codes
# (RFC 3463 X.3.4 "message too big for system").
_REWRITES = {
    "552 Error: Too much mail data": REPLY_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": REPLY_TOO_BIG,
}

ListenerProtocol = Literal["smtp", "lmtp"]


@dataclass(frozen=True, slots=True)
class ListenerOptions:
    """Plain settings of one listener (the app maps ``[listeners.smtp|lmtp]`` onto it)."""

    host: str = "127.0.0.1"
    port: int = 10025  # 0 picks a free port; read it back from SmtpListener.port
    max_message_bytes: int = 25 * 1024 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    auth_users: Mapping[str, str] = field(default_factory=dict)
    relay_mode: bool = False
    # Postfix/Exim after-queue content filter: every recipient is accepted from trusted
    # clients, and every message is handed back unchanged through the relay.
    content_filter: bool = False
    # CIDR networks whose clients may relay without AUTH (see the module docstring).
    relay_trusted_networks: tuple[str, ...] = ()
    hostname: str = ""  # greeting/EHLO name; "" = this host's name
    session_timeout_seconds: float = 300.0  # idle client is dropped (RFC 5321 4.5.3.2.7)
    drain_seconds: float = 10.0  # on shutdown, how long transactions in DATA may finish


class _AiosmtpdNoise(logging.Filter):
    """Drops aiosmtpd log lines that repeat on every connection and carry no news.

    * "auth_required == True but auth_require_tls == False": a configuration we chose
      knowingly (AUTH on loopback without TLS); the listener warns once at start.
    * "Session.login_data is deprecated": aiosmtpd itself sets that attribute on every
      successful AUTH.
    """

    _NOISE = ("auth_require_tls == False", "Session.login_data is deprecated")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not any(noise in message for noise in self._NOISE)


def _quiet_aiosmtpd() -> None:
    logger = logging.getLogger("mail.log")  # aiosmtpd's logger
    if not any(isinstance(f, _AiosmtpdNoise) for f in logger.filters):
        logger.addFilter(_AiosmtpdNoise())


class SmtpListener:
    """An SMTP or LMTP listener; a daemon ``Runnable``.

    ``run(stopping)`` binds, serves until ``stopping`` is set, then stops accepting
    connections, lets transactions already in ``DATA`` finish (at most
    ``drain_seconds``), answers every remaining session ``421 4.3.2`` (RFC 5321
    section 3.8) and returns.  :attr:`port` is the bound port once :attr:`ready` is set.
    """

    def __init__(
        self,
        options: ListenerOptions,
        intake: Intake,
        is_local: Callable[[str], bool],
        *,
        protocol: ListenerProtocol = "smtp",
        name: str | None = None,
    ) -> None:
        self.options = options
        self.protocol: ListenerProtocol = protocol
        self._name = name or protocol
        self.ready = asyncio.Event()
        self._port: int | None = None
        self._tls_context = _tls_context(options)
        self._hostname = options.hostname or socket.gethostname()
        self._handler = _IntakeHandler(
            intake,
            is_local,
            source=protocol,
            auth_offered=bool(options.auth_users),
            relay_mode=options.relay_mode,
            trusted_networks=_networks(options.relay_trusted_networks),
            content_filter=options.content_filter,
        )
        self._authenticator = _Authenticator(options.auth_users)
        _quiet_aiosmtpd()
        self._sessions: set[_GatewayServerMixin] = set()
        self._in_data = 0
        self._data_done = asyncio.Event()
        self._data_done.set()

    @property
    def name(self) -> str:
        return self._name

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._port is None:
            raise RuntimeError(f"{self._name} listener is not running")
        return self._port

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._new_session, self.options.host, self.options.port)
        sockets = server.sockets
        self._port = int(sockets[0].getsockname()[1]) if sockets else self.options.port
        log.info(
            "%s listening on %s:%d (%s%s%s)",
            self._name,
            self.options.host,
            self._port,
            self.protocol.upper(),
            ", STARTTLS" if self._tls_context else "",
            ", AUTH required" if self.options.auth_users else "",
        )
        if self.options.auth_users and self._tls_context is None:
            log.warning(
                "%s: AUTH without TLS sends passwords in clear; use it on loopback only", self._name
            )
        self.ready.set()
        try:
            await stopping.wait()
        finally:
            server.close()  # no new connections from here on
            await self._drain()
            try:
                await asyncio.wait_for(server.wait_closed(), self.options.drain_seconds)
            except TimeoutError:
                log.warning("%s: sessions still open after shutdown", self._name)
            self._ready_clear()

    def _ready_clear(self) -> None:
        self.ready.clear()
        self._port = None

    async def _drain(self) -> None:
        if self._in_data:
            log.info("%s: waiting for %d transaction(s) in DATA", self._name, self._in_data)
            try:
                await asyncio.wait_for(self._data_done.wait(), self.options.drain_seconds)
            except TimeoutError:
                log.warning("%s: drain timed out; the clients will retry", self._name)
        for session in list(self._sessions):
            session.close_for_shutdown()
        # Give the closing transports one loop turn to flush the 421 and tear down.
        await asyncio.sleep(0)

    # -- called by the session objects -----------------------------------------------------

    def _new_session(self) -> _GatewayServerMixin:
        cls: type[_GatewaySMTP | _GatewayLMTP] = (
            _GatewayLMTP if self.protocol == "lmtp" else _GatewaySMTP
        )
        options = self.options
        has_users = bool(options.auth_users)
        return cls(
            self._handler,
            listener=self,
            data_size_limit=options.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self._hostname,
            ident="imip-gateway",
            tls_context=self._tls_context,
            require_starttls=options.require_tls and self._tls_context is not None,
            timeout=options.session_timeout_seconds,
            auth_required=has_users,
            # With TLS configured, never let a password cross the wire in clear.
            auth_require_tls=self._tls_context is not None,
            authenticator=self._authenticator if has_users else None,
            loop=asyncio.get_running_loop(),
        )

    def _session_opened(self, session: _GatewayServerMixin) -> None:
        self._sessions.add(session)

    def _session_closed(self, session: _GatewayServerMixin) -> None:
        self._sessions.discard(session)

    def _data_started(self) -> None:
        self._in_data += 1
        self._data_done.clear()

    def _data_finished(self) -> None:
        self._in_data -= 1
        if self._in_data == 0:
            self._data_done.set()


# -- aiosmtpd server classes ---------------------------------------------------------------


class _GatewayServerMixin(SMTP):
    """What our SMTP and LMTP sessions share: bookkeeping, reply rewriting, safe DATA."""

    _per_recipient_replies = False
    # RFC 5321 section 4.5.3.1.6 limits a line to 1000 octets, but mail from broken
    # clients with longer lines still carries real invitations: accepting it (the
    # journal keeps the bytes as they came) beats bouncing it with "500 Line too long".
    line_length_limit = 1 << 16

    def __init__(self, handler: _IntakeHandler, *, listener: SmtpListener, **kwargs: Any) -> None:
        self._listener = listener
        self._after_354 = False
        self._data_recipients = 0
        # aiosmtpd warns when AUTH is required without TLS; we decided that knowingly
        # (the listener logs it once at start) and must not warn on every connection.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
            super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._listener._session_opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._listener._session_closed(self)
        super().connection_lost(error)

    def close_for_shutdown(self) -> None:
        """Say 421 (RFC 5321 section 3.8) and close; the client retries later."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(REPLY_SHUTTING_DOWN)
        transport.close()

    async def push(self, status: AnyStr) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        text = _REWRITES.get(text, text)
        if self._after_354 and self._per_recipient_replies:
            # RFC 2033 section 4.2: one reply per accepted RCPT, in order.
            text = "\r\n".join([text] * max(1, self._data_recipients))
            self._after_354 = False
        elif text.startswith("354"):
            self._after_354 = True
        await super().push(text)

    async def smtp_DATA(self, arg: str) -> None:
        self._listener._data_started()
        self._after_354 = False
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        try:
            if self._decode_data or "DATA" not in self._handle_hooks:
                await super().smtp_DATA(arg)  # modes this gateway never configures
            else:
                await self._smtp_data_chunked(arg)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            # The handler raised after the data was read (it normally answers every
            # error itself).  Reset the transaction and say "try later"; letting the
            # exception reach aiosmtpd would leave the envelope half-used.
            log.exception("unexpected error finishing DATA from %r", self._peer())
            self.envelope = self._create_envelope()  # what _set_post_data_state does
            await self.push(REPLY_TRY_LATER)
        finally:
            self._after_354 = False
            self._listener._data_finished()

    async def _smtp_data_chunked(self, arg: str) -> None:
        """aiosmtpd's ``smtp_DATA`` with the mail data read in chunks, not line by line.

        aiosmtpd awaits ``readuntil(CRLF)`` once per line, which costs most of its CPU
        per message.  Here the stream is searched for the end-of-data sequence
        ``CRLF . CRLF`` (RFC 5321 section 4.5.2) in whatever the socket delivered, and
        the transparency dots are removed from the whole body at once.  Everything the
        client sees is unchanged: the preconditions and their replies, the octet count
        checked against SIZE (dot-stuffed octets, as before, 552 after the final dot),
        the line-length refusal (500 after the final dot), bare CR or LF being ordinary
        data, and the reply to the handler's status.
        """
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            received = await _read_mail_data(
                self._reader, self.data_size_limit or 0, self.line_length_limit
            )
        except asyncio.CancelledError:
            # The connection went away during DATA (aiosmtpd cancels us on EOF).
            log.info("connection lost during DATA from %r", self._peer())
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("connection closed during DATA from %r", self._peer())
            self._writer.close()
            return
        if isinstance(received, str):
            await self.push(received)
            self.envelope = self._create_envelope()  # aiosmtpd's _set_post_data_state
            return
        self.envelope.content = received
        self.envelope.original_content = received
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL/RCPT path parsing, with a fast path for the common form.

        aiosmtpd hands every path to the email package's RFC 5322 header parser, which
        costs more per command than reading a whole message body.  ``<local@domain>``
        made of dot-atoms (RFC 5321 section 4.1.2 Dot-string, ASCII only) needs no
        parser: the address is the text between the brackets, exactly what the full
        parser returns for it.  Anything else (the null path ``<>``, quoted local parts,
        address literals, comments, UTF-8 under SMTPUTF8) still goes to aiosmtpd.
        """
        simple = _SIMPLE_PATH.match(arg)
        if simple is not None:
            address = simple.group(1)
            rest = arg[simple.end() :]
            if rest[:1] in (" ", "\t"):
                rest = rest.lstrip()  # the parser's folding white space after the ">"
            local = address.rpartition("@")[0]
            if not rest.startswith("(") and not (
                self.local_part_limit and len(local) > self.local_part_limit
            ):
                return address, rest
        parsed: tuple[str | None, str | None] = super()._getaddr(arg)
        return parsed

    def _peer(self) -> object:
        return self.session.peer if self.session is not None else None


class _GatewaySMTP(_GatewayServerMixin):
    pass


class _GatewayLMTP(_GatewayServerMixin, LMTP):
    _per_recipient_replies = True


# -- the handler: business decisions ---------------------------------------------------------


class _IntakeHandler:
    """aiosmtpd handler hooks: who may receive, and durable acceptance of the data."""

    def __init__(
        self,
        intake: Intake,
        is_local: Callable[[str], bool],
        *,
        source: ListenerProtocol,
        auth_offered: bool,
        relay_mode: bool,
        trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
        content_filter: bool = False,
    ) -> None:
        self._intake = intake
        self._is_local = is_local
        self._source = source
        self._auth_offered = auth_offered
        self._relay_mode = relay_mode
        self._trusted = trusted_networks
        self._content_filter = content_filter

    async def handle_EHLO(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With this 5-argument hook aiosmtpd leaves recording the name to us.
        session.host_name = hostname
        if not self._auth_offered:
            # No users configured: do not advertise an AUTH that can never succeed.
            responses = [line for line in responses if not line[4:].startswith("AUTH")]
        return responses

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        addr = normalise(address)
        if self._content_filter and addr and self._may_relay(session):
            # The MTA in front already decided who may receive what; a content filter
            # accepts what it is given and hands it back (the relay re-injects it).
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        if addr and self._is_local(addr):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 Ok"
        if self._relay_mode and self._sender_is_local(envelope):
            if self._may_relay(session):
                envelope.rcpt_tos.append(address)
                log.info("relaying for %s to %s (peer %r)", envelope.mail_from, addr, session.peer)
                return "250 2.1.5 Ok (relay)"
            return REPLY_RELAY_DENIED.format(addr=_printable(addr))
        return REPLY_NOT_LOCAL.format(addr=_printable(addr))

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: SmtpEnvelope) -> str:
        raw = envelope.original_content
        if raw is None:  # pragma: no cover - aiosmtpd always sets it before this hook
            return REPLY_TRY_LATER
        rcpts = tuple(normalise(r) for r in envelope.rcpt_tos)
        relayed = any(not self._is_local(r) for r in rcpts)
        filtered = self._content_filter and self._may_relay(session)
        extra: dict[str, str] = {}
        auth_data: object = getattr(session, "auth_data", None)
        if session.authenticated and isinstance(auth_data, LoginPassword):
            extra["auth_user"] = auth_data.login.decode("utf-8", "replace")
        mail_from = envelope.mail_from or ""
        message_envelope = Envelope(
            source="filter" if filtered else ("relay" if relayed else self._source),
            # "<>" is the null reverse-path of a bounce (RFC 5321 section 4.5.5).
            mail_from="" if mail_from in ("", "<>") else normalise(mail_from),
            rcpt_tos=rcpts,
            peer=_peer_text(session.peer),
            helo=session.host_name or "",
            extra=extra,
        )
        try:
            accepted = await self._intake.accept(bytes(raw), message_envelope)
        except MessageTooLarge:
            return REPLY_TOO_BIG
        except TemporaryFailure:
            return REPLY_TRY_LATER
        except Exception:
            log.exception("intake failed for a message from %r", session.peer)
            return REPLY_TRY_LATER
        return f"250 2.0.0 Ok: queued as {accepted.journal_id}"

    async def handle_exception(self, error: Exception) -> str:
        # Replaces aiosmtpd's "500 Error: (Type) text": the details go to our log only.
        log.error("error in SMTP session", exc_info=error)
        return REPLY_TRY_LATER

    def _sender_is_local(self, envelope: SmtpEnvelope) -> bool:
        sender = normalise(envelope.mail_from)
        return bool(sender) and sender != "<>" and self._is_local(sender)

    def _may_relay(self, session: SmtpSession) -> bool:
        if session.authenticated:
            return True
        host = _peer_host(session.peer)
        if host is None:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)


class _Authenticator:
    """AUTH PLAIN/LOGIN against the configured users (constant-time comparison)."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = {name: password.encode("utf-8") for name, password in users.items()}

    def __call__(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        expected = self._users.get(login)
        ok = expected is not None and hmac.compare_digest(expected, auth_data.password)
        if not ok:
            log.warning("failed AUTH %s for %r from %r", mechanism, login, session.peer)
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=auth_data)


# RFC 5322 section 3.2.3 atext, and dot-atoms of it on both sides of the "@".
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")

# -- reading the mail data ------------------------------------------------------------------

# RFC 5321 section 4.5.2: the data ends with a line holding only "."; the CRLF before
# the dot ends the message's last line (or is the one ending the DATA command).
_END_OF_DATA = b"\r\n.\r\n"
_REFUSE_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
_REFUSE_TOO_MUCH = "552 Error: Too much mail data"  # rewritten to REPLY_TOO_BIG by push


def _partial_end(tail: bytes) -> int:
    """How many octets of ``_END_OF_DATA`` the stream read so far already ends with."""
    for size in (4, 3, 2, 1):
        if tail.endswith(_END_OF_DATA[:size]):
            return size
    return 0


async def _read_mail_data(
    reader: asyncio.StreamReader, size_limit: int, line_limit: int
) -> bytes | str:
    """Read mail data up to and including the final ``.`` line; the body, or a refusal.

    The body is returned with the transparency dots removed (RFC 5321 section 4.5.2);
    a refusal is the reply to send once the data has been read to its end (RFC 5321
    section 4.2.5 lets the server answer only after the final dot).  ``size_limit`` 0
    means unlimited.  Nothing after the final dot is consumed: a pipelining client's
    next command stays in ``reader``.

    ``readuntil`` finds the end sequence in the buffered data; when none is there yet and
    the buffer exceeds the reader's limit it raises ``LimitOverrunError`` and the octets
    that cannot belong to an end sequence (all but the last four) are taken as a chunk.
    A chunk that ends with the start of the sequence (``CR``, ``CR LF`` ...) -- and the
    very beginning, right after the DATA command's ``CRLF`` -- is continued by reading
    exactly the rest of the sequence, so the search never reads past the final dot.
    """
    data = bytearray()
    total = 0  # octets as sent (dot-stuffed): what SIZE is checked against, as in aiosmtpd
    keep = True  # False once far enough over the size limit that the verdict is certain
    tail = b"\r\n"  # the DATA command's line end: an immediate "." ends an empty message
    while True:
        matched = _partial_end(tail)
        if matched:
            rest = _END_OF_DATA[matched:]
            piece = await reader.readexactly(len(rest))
            if piece == rest:
                # The end sequence began ``matched`` octets back: those are its CRLF
                # (the body's last line end, kept) and possibly its "." and CR (dropped).
                # At the very start they are the DATA command's CRLF: an empty body.
                total += 2 - matched
                if keep and data:
                    del data[len(data) - matched :]
                    data += b"\r\n"
                break
            done = False
        else:
            try:
                piece = await reader.readuntil(_END_OF_DATA)
                piece = piece[:-3]  # drop ".CRLF"; the CRLF before it ends the last line
                done = True
            except asyncio.LimitOverrunError as exc:
                piece = await reader.read(exc.consumed)
                done = False
        total += len(piece)
        if keep:
            data += piece
            # Past the limit by more than one line: the verdict cannot change any more
            # (see _verdict), so stop holding octets that will be discarded anyway.
            keep = not size_limit or len(data) <= size_limit + line_limit + 3
        if done:
            break
        tail = (tail + piece)[-4:]
    refusal = _verdict(data, total, size_limit, line_limit)
    if refusal is not None:
        return refusal
    # Transparency (RFC 5321 section 4.5.2): a line starting with "." had one added.
    if data[:1] == b".":
        del data[0]
    return bytes(data).replace(b"\r\n.", b"\r\n")


def _verdict(data: bytearray, total: int, size_limit: int, line_limit: int) -> str | None:
    """The refusal aiosmtpd's line-by-line reader would give for this data, if any.

    aiosmtpd checks each CRLF-terminated line in order: one longer than ``line_limit + 2``
    is refused as too long before it is counted, then the running octet count is
    checked against the size limit, then a line longer than ``line_limit`` is refused.
    The first refusal wins.
    """
    over = bool(size_limit) and total > size_limit
    if len(data) <= line_limit or not _may_have_long_line(data, line_limit):
        return _REFUSE_TOO_MUCH if over else None
    count = 0
    start = 0
    size = len(data)
    while start < size:
        end = data.find(b"\r\n", start)
        end = size if end < 0 else end + 2
        length = end - start
        if length > line_limit + 2:
            return _REFUSE_LINE_TOO_LONG
        count += length
        if size_limit and count > size_limit:
            return _REFUSE_TOO_MUCH
        if length > line_limit:
            return _REFUSE_LINE_TOO_LONG
        start = end
    return _REFUSE_TOO_MUCH if over else None


def _may_have_long_line(data: bytearray, line_limit: int) -> bool:
    """False when every line is surely at most ``line_limit`` octets (a cheap pre-check).

    A line longer than ``line_limit`` covers a whole window of ``line_limit // 2``
    octets starting at a multiple of that size, so if every such window holds a CRLF
    there is none.
    """
    step = max(1, line_limit // 2)
    size = len(data)
    for start in range(0, size, step):
        stop = start + step + 1  # +1: a CRLF straddling the window's end counts
        if stop <= size and data.find(b"\r\n", start, stop) < 0:
            return True
    return False


# -- helpers --------------------------------------------------------------------------------


def _tls_context(options: ListenerOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None or options.tls_key is None:
        if options.require_tls:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
    return context


def _networks(
    specs: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(spec, strict=False) for spec in specs)


def _peer_host(peer: object) -> str | None:
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "" if peer is None else str(peer)


def _printable(addr: str) -> str:
    # Never echo control characters or angle brackets back into the reply line.
    return "".join(ch for ch in addr if ch.isprintable() and ch not in "<>")[:254]
