"""Hand composed mail to the configured relay (smarthost) with aiosmtplib.

One :class:`RelaySender` keeps a small pool of open SMTP sessions (at most
``max_connections``) and reuses them.  A session that sat idle for a while is checked
with ``RSET`` (RFC 5321 section 4.1.1.5) before reuse, which proves it is still alive;
one that finished a transaction moments ago is reused as it is (the server cleared its
state when it answered the end of DATA, section 4.1.1.4), which saves a round trip per
message under load, and if it turns out to be gone the message is sent once more at
once on a new connection.  A session that fails the check, has been idle too long or
broke during a transaction is dropped and replaced.  TLS modes: none, STARTTLS
(RFC 3207, required when chosen) and implicit TLS ("submissions", RFC 8314); AUTH
(RFC 4954) when credentials are set.

:meth:`RelaySender.send` never raises for delivery problems; it classifies the outcome
(RFC 5321 section 4.2.1) into a :class:`SendResult`:

* ``sent``: 2xx after DATA.  Recipients refused individually while others were accepted
  are listed in :attr:`SendResult.refused` (the message went to the rest);
* ``temporary``: a 4xx reply, a refused connection, a timeout, a dropped session, and
  also problems of *our* relay session (greeting or AUTH refused, ``530 Authentication
  required`` at MAIL, TLS failure): those say nothing about the message, so retrying
  after the operator fixes the relay configuration must work;
* ``permanent``: a 5xx reply to MAIL, RCPT (every recipient refused with 5xx) or DATA.

Outgoing iMIP messages are composed elsewhere (:mod:`gateway.mime.compose`, RFC 6047
section 2; ``Auto-Submitted`` per RFC 3834); the bytes are sent unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import aiosmtplib

__all__ = ["RelayOptions", "RelaySender", "SendResult", "SendStatus", "TlsMode"]

log = logging.getLogger(__name__)

TlsMode = Literal["none", "starttls", "implicit"]
SendStatus = Literal["sent", "temporary", "permanent"]

_EMPTY: Mapping[str, tuple[int, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """Plain settings of the relay (the app maps ``[relay]`` onto it)."""

    host: str = "127.0.0.1"
    port: int = 25
    tls: TlsMode = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    timeout_seconds: float = 30.0
    max_connections: int = 2
    # PEM CA bundle trusted *instead of* the system store (a private relay); None = system.
    ca_file: Path | None = None
    validate_certs: bool = True
    local_hostname: str | None = None  # our EHLO name; None = this host's FQDN
    # A pooled session idle longer than this is closed instead of reused (relays drop
    # idle clients after a few minutes, RFC 5321 section 4.5.3.2.7 allows 5).
    idle_seconds: float = 60.0
    # A pooled session idle longer than this is checked with RSET before reuse; a
    # busier one is reused directly (see the module docstring).
    recheck_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to one message."""

    status: SendStatus
    code: int | None  # the deciding SMTP reply code; None for network errors
    detail: str  # the server's text or the error, for logs and the outbox row
    # recipient -> (code, text), for recipients refused individually
    refused: Mapping[str, tuple[int, str]] = field(default_factory=lambda: _EMPTY)

    @property
    def ok(self) -> bool:
        return self.status == "sent"

    def describe(self) -> str:
        """One line for ``last_error`` and logs."""
        head = f"{self.code} {self.detail}" if self.code is not None else self.detail
        if self.refused:
            refusals = "; ".join(f"{r}: {c} {t}" for r, (c, t) in sorted(self.refused.items()))
            return f"{head} (refused: {refusals})"
        return head


class _Session:
    def __init__(self, client: aiosmtplib.SMTP, now: float) -> None:
        self.client = client
        self.last_used = now
        self.messages = 0
        # True when this checkout proved the session alive (new, or RSET answered).
        self.checked = True


class RelaySender:
    """Sends messages through the relay over a small pool of reused SMTP sessions."""

    def __init__(
        self, options: RelayOptions, *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if options.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.options = options
        self._monotonic = monotonic
        self._slots = asyncio.Semaphore(options.max_connections)
        self._idle: list[_Session] = []
        self._tls_context = _client_tls_context(options)
        self._closed = False

    async def send(self, mail_from: str, rcpt_tos: Sequence[str], data: bytes) -> SendResult:
        """Deliver ``data`` to the relay for ``rcpt_tos``; never raises for SMTP trouble."""
        if not rcpt_tos:
            return SendResult("permanent", None, "no recipients")
        if self._closed:
            return SendResult("temporary", None, "sender is closed (shutting down)")
        async with self._slots:
            session, failure = await self._checkout()
            if session is None:
                assert failure is not None
                return failure
            result, reusable = await self._transaction(session, mail_from, rcpt_tos, data)
            if not reusable and result.code is None and not session.checked:
                # The unchecked pooled session was gone (the relay closed it while it
                # sat in the pool): no reply means no transaction, so send once more
                # on a new connection instead of deferring the message for a retry.
                _discard(session)
                session, failure = await self._connect()
                if session is None:
                    assert failure is not None
                    return failure
                result, reusable = await self._transaction(session, mail_from, rcpt_tos, data)
            if reusable and not self._closed:
                session.last_used = self._monotonic()
                self._idle.append(session)
            else:
                _discard(session)
            return result

    async def aclose(self) -> None:
        """Close every pooled session politely (QUIT)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for session in idle:
            try:
                await asyncio.wait_for(session.client.quit(), self.options.timeout_seconds)
            except Exception:
                _discard(session)

    # -- pool ----------------------------------------------------------------------------------

    async def _checkout(self) -> tuple[_Session | None, SendResult | None]:
        now = self._monotonic()
        while self._idle:
            session = self._idle.pop()  # most recently used first: likeliest alive
            if (
                not session.client.is_connected
                or now - session.last_used > self.options.idle_seconds
            ):
                _discard(session)
                continue
            session.checked = now - session.last_used > self.options.recheck_seconds
            if not session.checked:
                return session, None
            try:
                await session.client.rset()
            except Exception as exc:
                log.debug("pooled relay session failed RSET (%s); reconnecting", exc)
                _discard(session)
                continue
            return session, None
        return await self._connect()

    async def _connect(self) -> tuple[_Session | None, SendResult | None]:
        o = self.options
        client = aiosmtplib.SMTP(
            hostname=o.host,
            port=o.port,
            username=o.username or None,
            password=o.password or None,
            local_hostname=o.local_hostname,
            timeout=o.timeout_seconds,
            use_tls=o.tls == "implicit",
            start_tls=o.tls == "starttls",
            tls_context=self._tls_context,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            # Greeting, EHLO, STARTTLS or AUTH refused: a problem of our relay session,
            # never of the message, hence temporary even for 5xx (see module docstring).
            client.close()
            log.warning(
                "relay %s:%d refused the session: %s %s", o.host, o.port, exc.code, exc.message
            )
            return None, SendResult("temporary", exc.code, f"relay session refused: {exc.message}")
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
            client.close()
            log.warning("cannot connect to relay %s:%d: %s", o.host, o.port, _text(exc))
            return None, SendResult("temporary", None, f"cannot connect to relay: {_text(exc)}")
        log.debug("new relay session to %s:%d", o.host, o.port)
        return _Session(client, self._monotonic()), None

    # -- one mail transaction --------------------------------------------------------------------

    async def _transaction(
        self, session: _Session, mail_from: str, rcpt_tos: Sequence[str], data: bytes
    ) -> tuple[SendResult, bool]:
        """Returns the result and whether the session may be reused."""
        client = session.client
        options: list[str] = []
        if any(b > 0x7F for b in data) and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152
        if not all(a.isascii() for a in (mail_from, *rcpt_tos)) and client.supports_extension(
            "smtputf8"
        ):
            options.append("SMTPUTF8")  # RFC 6531
        try:
            errors, reply = await client.sendmail(
                mail_from, list(rcpt_tos), data, mail_options=options
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {r.recipient: (r.code, r.message) for r in exc.recipients}
            # Every recipient refused: permanent only if every refusal is permanent.
            permanent = all(code >= 500 for code, _ in refused.values())
            code = max(code for code, _ in refused.values()) if refused else None
            status: SendStatus = "permanent" if permanent else "temporary"
            return SendResult(
                status, code, "all recipients refused", MappingProxyType(refused)
            ), _alive(client)
        except aiosmtplib.SMTPResponseException as exc:
            # 421 means the server is closing the channel (RFC 5321 section 3.8).
            reusable = exc.code != 421 and _alive(client)
            if exc.code in _SESSION_REFUSALS:
                # "Authentication required/invalid" (RFC 4954 section 6): our relay
                # credentials are wrong or missing, which says nothing about the message.
                log.warning("relay refused our session: %s %s", exc.code, exc.message)
                return SendResult("temporary", exc.code, f"relay session: {exc.message}"), False
            return SendResult(_classify(exc.code), exc.code, exc.message), reusable
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return SendResult("temporary", None, f"relay session failed: {_text(exc)}"), False
        session.messages += 1
        refused_some = {r: (resp.code, resp.message) for r, resp in errors.items()}
        if refused_some:
            log.warning("relay refused some recipients: %s", refused_some)
        return SendResult("sent", 250, reply, MappingProxyType(refused_some)), True


# Replies about our session's authorisation, not about the message (RFC 4954 section 6):
# 530 authentication required, 534 mechanism too weak, 535 credentials invalid,
# 538 encryption required for the mechanism.
_SESSION_REFUSALS = frozenset({530, 534, 535, 538})


def _classify(code: int) -> SendStatus:
    if 200 <= code < 300:  # pragma: no cover - aiosmtplib raises only for errors
        return "sent"
    return "permanent" if code >= 500 else "temporary"


def _alive(client: aiosmtplib.SMTP) -> bool:
    return bool(client.is_connected)


def _discard(session: _Session) -> None:
    try:
        session.client.close()
    except Exception:  # pragma: no cover - closing a broken transport
        log.debug("error closing a relay session", exc_info=True)


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _client_tls_context(options: RelayOptions) -> ssl.SSLContext | None:
    if options.tls == "none":
        return None
    context = ssl.create_default_context(
        cafile=str(options.ca_file) if options.ca_file is not None else None
    )
    if not options.validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
