"""IMAP intake: watch one mailbox and hand every new message to the durable intake.

One :class:`ImapPoller` per configured account (a daemon ``Runnable``).  The cycle:

1. connect (implicit TLS, STARTTLS or clear text), LOGIN, SELECT the mailbox and read its
   UIDVALIDITY (RFC 3501 sections 6.2.3, 6.3.1);
2. compare with the position remembered in the store (``imap_state``: UIDVALIDITY and the
   last processed UID).  A UID is only meaningful together with its UIDVALIDITY (RFC 3501
   section 2.3.1.1): when it changed, the mailbox was rebuilt, the remembered UID is
   forgotten and the whole mailbox is rescanned.  Messages seen before are recognised
   by the journal (same SHA-256 and Message-ID) and not processed twice;
3. ``UID SEARCH UID last+1:*`` and, per message in UID order, ``UID FETCH BODY.PEEK[]``
   (PEEK: fetching must not set ``\\Seen``), then ``Intake.accept``.  **Only after it
   returned** -- the journal row is committed -- the message is marked ``\\Seen`` and/or
   moved to the processed folder (UID MOVE, RFC 6851, or COPY + ``\\Deleted`` + UID
   EXPUNGE, RFC 4315, on servers without MOVE), and the new last UID is stored.  A crash
   between the commit and the flag only makes the message come back as a duplicate;
4. wait for new mail: IDLE (RFC 2177) when the server offers it, else NOOP polling.

Failure handling -- nothing is ever lost and the daemon never crashes because of IMAP:

* ``TemporaryFailure`` from the intake (database down): the message is left untouched
  (unseen, in place) and the pass ends; the next pass retries it.
* A message that cannot be fetched or accepted ``max_message_attempts`` times in a row
  (the server answers NO to the FETCH, or the intake raises something other than
  ``TemporaryFailure``) is moved, unseen, to the failed folder when one is configured,
  and left where it is otherwise; the poller then goes on with the next one.  Either
  way the message stays on the server for a human (it is not in the journal: there was
  nothing durable to record); the poller just moves its position past it.  Attempts
  are counted in memory: a restart before the limit starts the count afresh.
* **Liveness**: a connection to a stopped server can look alive for a while.  IDLE is
  ended (DONE) and re-issued every ``liveness_interval_seconds``, and polling sends NOOP
  as often; each round trip has a deadline, so a dead connection is noticed within
  ``liveness_interval + liveness_timeout`` seconds, and a closed socket at once.
* Any connection problem (including a refused LOGIN or SELECT, or TLS that cannot be
  established -- never a fallback to clear text): reconnect with exponential backoff
  and jitter, capped at ``reconnect_max_seconds``; the backoff restarts from the
  initial delay after a session that got as far as selecting the mailbox.

On ``stopping``: finish the message in hand, leave IDLE (DONE), LOGOUT, return.  A
connection attempt that has not selected the mailbox yet is simply abandoned.

``mark_seen`` suits a mailbox dedicated to the gateway; on a mailbox a person also reads,
turn it off (or use a processed folder) so that ordinary mail is not marked read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from gateway.domain.addresses import normalise
from gateway.services.ports import Envelope, Intake, TemporaryFailure
from gateway.store import imap_state
from gateway.store.facade import Store
from gateway.transports.imap_client import (
    ImapClient,
    ImapCommandError,
    ImapError,
    SelectedMailbox,
    TlsMode,
)

__all__ = ["Clock", "ImapAccountOptions", "ImapPoller", "backoff_delay", "return_path"]

log = logging.getLogger(__name__)

#: Returns the current time as an aware UTC datetime.
Clock = Callable[[], datetime]

_STEADY = frozenset({"idle", "polling", "syncing"})
_SEEN = "\\Seen"
_DELETED = "\\Deleted"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_RETURN_PATH = re.compile(
    rb"^Return-Path:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class ImapAccountOptions:
    """One ``[[imap.accounts]]`` entry, as plain values (the app maps the config)."""

    name: str
    host: str
    port: int
    username: str
    password: str = field(repr=False)  # never in logs or tracebacks
    recipient: str  # the local calendar user this mailbox belongs to
    tls: TlsMode = "implicit"
    mailbox: str = "INBOX"
    processed_folder: str | None = None
    failed_folder: str | None = None
    mark_seen: bool = True
    use_idle: bool = True
    poll_interval_seconds: float = 60.0
    liveness_interval_seconds: float = 5.0
    # How long a NOOP / DONE may take before the connection is declared dead.
    liveness_timeout_seconds: float = 5.0
    # Deadline of every other command (FETCH of a large message resets it on progress).
    command_timeout_seconds: float = 30.0
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 300.0
    max_message_attempts: int = 3
    # None: the system trust store with host name checking.
    ssl_context: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if self.tls not in ("implicit", "starttls", "none"):
            raise ValueError(f"imap account {self.name!r}: unknown tls mode {self.tls!r}")
        for field_name in (
            "poll_interval_seconds",
            "liveness_interval_seconds",
            "liveness_timeout_seconds",
            "command_timeout_seconds",
            "reconnect_initial_seconds",
            "reconnect_max_seconds",
        ):
            if not getattr(self, field_name) > 0:
                raise ValueError(f"imap account {self.name!r}: {field_name} must be > 0")
        if self.max_message_attempts < 1:
            raise ValueError(f"imap account {self.name!r}: max_message_attempts must be >= 1")


class _EndPass(Exception):
    """Stop this pass and wait for the next (a temporary failure, or stopping)."""


def return_path(raw: bytes) -> str:
    """The envelope sender recorded by the delivering MTA (``Return-Path``), or ``""``.

    RFC 5321 section 4.4: the final delivery MTA stores MAIL FROM as ``Return-Path``.
    ``<>`` (a bounce) and a missing header both give ``""``.
    """
    end = _HEADER_END.search(raw)
    header_block = raw[: end.start()] if end else raw
    match = _RETURN_PATH.search(header_block)
    if match is None:
        return ""
    value = re.sub(rb"\r?\n[ \t]+", b" ", match.group(1)).decode("utf-8", "replace").strip()
    if value.replace(" ", "") == "<>":  # the null reverse-path (RFC 5321 section 4.5.5)
        return ""
    return normalise(value)


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential, capped, jittered.

    "Equal jitter": between half and all of ``min(cap, initial * 2**(attempt-1))``, so a
    flapping server is not hammered and many pollers do not reconnect in lockstep.
    """
    ceiling = min(cap, initial * 2 ** min(max(attempt, 1) - 1, 30))
    return float(ceiling / 2 + rng.uniform(0, ceiling / 2))


class ImapPoller:
    """Watches one IMAP mailbox; a daemon ``Runnable`` (see :mod:`gateway.daemon`)."""

    def __init__(
        self,
        options: ImapAccountOptions,
        intake: Intake,
        store: Store,
        clock: Clock,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self._intake = intake
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()
        # (uidvalidity, uid) -> consecutive failures of that message in this process.
        self._failures: dict[tuple[int, int], int] = {}
        self._state_name = "stopped"
        #: Number of completed passes over the mailbox (for health checks and tests).
        self.passes = 0
        #: Number of sessions that ended on an error, and why the last one did.
        self.session_errors = 0
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return f"imap:{self.options.name}"

    @property
    def state(self) -> str:
        """``connecting``, ``idle``, ``polling``, ``syncing``, ``backoff`` or ``stopped``."""
        return self._state_name

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self._state_name:
            return
        # idle <-> syncing alternates every liveness interval: only connection-level
        # changes are worth an INFO line.
        steady = {self._state_name, state} <= _STEADY
        log.log(
            logging.DEBUG if steady else logging.INFO,
            "%s: %s -> %s%s",
            self.name,
            self._state_name,
            state,
            detail,
        )
        self._state_name = state

    # -- the outer loop: connect, serve, back off ------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Serve the mailbox until ``stopping`` is set; never raises for IMAP trouble."""
        failures = 0
        try:
            while not stopping.is_set():
                self._set_state("connecting", f" ({self.options.host}:{self.options.port})")
                selected = asyncio.Event()
                try:
                    await self._attempt(stopping, selected)
                except (ImapError, OSError, TimeoutError) as exc:
                    # Connection refused/lost/timed out, TLS refused, LOGIN or SELECT
                    # refused: all worth retrying later (a password may be fixed).
                    log.warning("%s: IMAP session ended: %s", self.name, exc)
                    self._record_error(exc)
                except Exception as exc:
                    # A bug must not stop the intake of the other accounts: log, back off,
                    # reconnect.  The message being handled stays on the server.
                    log.exception("%s: unexpected error; reconnecting", self.name)
                    self._record_error(exc)
                if stopping.is_set():
                    break
                # Back off further only while no mailbox could be selected: a session that
                # worked and then dropped starts again from the initial delay.
                failures = failures + 1 if not selected.is_set() else 1
                delay = self._backoff(failures)
                self._set_state("backoff", f" (reconnecting in {delay:.1f}s)")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
        finally:
            self._set_state("stopped")

    async def _attempt(self, stopping: asyncio.Event, selected: asyncio.Event) -> None:
        """Run one session; abandon it at once if asked to stop before it selected.

        Connecting and logging in can take long (a slow server, a login penalty after
        failed attempts); nothing needs draining then, so shutdown must not wait for
        it.  Once the mailbox is selected the session stops itself cleanly (it finishes
        the message in hand, leaves IDLE and logs out).
        """
        session = asyncio.create_task(self._session(stopping, selected.set), name=self.name)
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({session, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not session.done() and not selected.is_set():
                session.cancel()
            await asyncio.wait({session})
        finally:
            stop.cancel()
            if not session.done():  # we are being cancelled ourselves
                session.cancel()
        if not session.cancelled():
            session.result()  # re-raise what ended the session

    def _record_error(self, exc: BaseException) -> None:
        self.session_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(
            attempt,
            self.options.reconnect_initial_seconds,
            self.options.reconnect_max_seconds,
            self._rng,
        )

    async def _session(self, stopping: asyncio.Event, on_selected: Callable[[], None]) -> None:
        """One connection: select the mailbox (then ``on_selected()``), serve until stop."""
        options = self.options
        client = await ImapClient.connect(
            options.host,
            options.port,
            tls=options.tls,
            ssl_context=options.ssl_context,
            command_timeout=options.command_timeout_seconds,
        )
        try:
            await client.login(options.username, options.password)
            mailbox = await client.select(options.mailbox)
            last_uid = await self._position(mailbox)
            log.info(
                "%s: selected %s (UIDVALIDITY %d, %d messages, last processed UID %d)",
                self.name,
                mailbox.name,
                mailbox.uidvalidity,
                mailbox.exists,
                last_uid,
            )
            on_selected()
            use_idle = options.use_idle and client.has_capability("IDLE")
            if options.use_idle and not use_idle:
                log.info("%s: the server does not offer IDLE; polling", self.name)
            while not stopping.is_set():
                self._set_state("syncing")
                last_uid = await self._sync(client, mailbox, last_uid, stopping)
                self.passes += 1
                if stopping.is_set():
                    break
                if use_idle:
                    self._set_state("idle")
                    await client.idle(
                        options.liveness_interval_seconds,
                        stopping,
                        options.liveness_timeout_seconds,
                    )
                else:
                    self._set_state("polling")
                    await self._poll_wait(client, stopping)
            await client.logout(options.liveness_timeout_seconds)
        finally:
            client.close()

    async def _poll_wait(self, client: ImapClient, stopping: asyncio.Event) -> None:
        """Wait ``poll_interval``, proving the connection alive with NOOP meanwhile.

        Returns early when NOOP reports new messages (``EXISTS``, RFC 3501 section 7.3.1).
        """
        options = self.options
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.poll_interval_seconds
        while not stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            step = min(remaining, options.liveness_interval_seconds)
            waiters = {
                asyncio.ensure_future(stopping.wait()),
                asyncio.ensure_future(client.lost.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if stopping.is_set():
                return
            untagged = await client.noop(options.liveness_timeout_seconds)
            if any(line.upper().endswith(b" EXISTS") for line in untagged):
                return

    # -- position (UIDVALIDITY + last UID) -------------------------------------------------

    async def _position(self, mailbox: SelectedMailbox) -> int:
        """The last processed UID valid for ``mailbox``'s current UIDVALIDITY."""
        account, name = self.options.name, self.options.mailbox
        stored = await self._store.read(imap_state.get, account, name)
        if stored is not None and stored.uidvalidity == mailbox.uidvalidity:
            return stored.last_uid
        if stored is not None:
            log.warning(
                "%s: UIDVALIDITY of %s changed from %d to %d: rescanning the whole mailbox"
                " (messages already journaled are recognised as duplicates)",
                self.name,
                name,
                stored.uidvalidity,
                mailbox.uidvalidity,
            )
        await self._save_position(mailbox.uidvalidity, 0)
        return 0

    async def _save_position(self, uidvalidity: int, last_uid: int) -> None:
        await self._store.run(
            imap_state.set,
            self.options.name,
            self.options.mailbox,
            uidvalidity=uidvalidity,
            last_uid=last_uid,
            now=self._clock(),
        )

    # -- one pass over the new messages ----------------------------------------------------

    async def _sync(
        self, client: ImapClient, mailbox: SelectedMailbox, last_uid: int, stopping: asyncio.Event
    ) -> int:
        """Process every message above ``last_uid``; return the new last UID."""
        for uid in await client.uids_from(last_uid + 1):
            if stopping.is_set():
                break
            try:
                finished = await self._handle(client, mailbox, uid)
            except _EndPass:
                break
            if not finished:
                # Keep UID order: a message that failed is retried (next pass) before
                # any later one advances the remembered position past it.
                break
            last_uid = uid
            try:
                await self._save_position(mailbox.uidvalidity, uid)
            except Exception as exc:
                # The message is journaled and flagged; forgetting the position only
                # means it comes back as a duplicate after a restart.
                log.warning("%s: could not store the last UID %d: %s", self.name, uid, exc)
        return last_uid

    async def _handle(self, client: ImapClient, mailbox: SelectedMailbox, uid: int) -> bool:
        """Fetch, accept and settle one message; ``True`` when done with it."""
        key = (mailbox.uidvalidity, uid)
        try:
            raw = await client.fetch_message(uid)
        except ImapCommandError as exc:
            return await self._failed(client, key, f"fetch failed: {exc}")
        if raw is None:
            # Expunged by another client between SEARCH and FETCH: nothing to take.
            log.info("%s: UID %d disappeared before it could be fetched", self.name, uid)
            return True
        envelope = Envelope(
            source="imap",
            mail_from=return_path(raw),
            rcpt_tos=(self.options.recipient,),
            imap_account=self.options.name,
        )
        try:
            accepted = await self._intake.accept(raw, envelope)
        except TemporaryFailure as exc:
            # Untouched: still unseen and in place; retried on the next pass.
            log.warning("%s: UID %d not accepted now (%s); will retry", self.name, uid, exc)
            raise _EndPass from exc
        except Exception as exc:
            log.exception("%s: UID %d could not be accepted", self.name, uid)
            return await self._failed(client, key, f"intake refused it: {exc}")
        self._failures.pop(key, None)
        log.info(
            "%s: UID %d accepted as journal row %d%s",
            self.name,
            uid,
            accepted.journal_id,
            " (duplicate)" if accepted.duplicate else "",
        )
        # Durable now (the journal committed): only from here may the message be marked.
        await self._settle(client, uid, self.options.processed_folder, what="processed")
        return True

    async def _failed(self, client: ImapClient, key: tuple[int, int], reason: str) -> bool:
        """Count a failure of one message; give up on it after ``max_message_attempts``."""
        uid = key[1]
        count = self._failures.get(key, 0) + 1
        self._failures[key] = count
        if count < self.options.max_message_attempts:
            log.warning(
                "%s: UID %d: %s (attempt %d of %d; will retry)",
                self.name,
                uid,
                reason,
                count,
                self.options.max_message_attempts,
            )
            return False
        self._failures.pop(key, None)
        folder = self.options.failed_folder
        if folder is None:
            log.error(
                "%s: UID %d: %s; giving up after %d attempts -- the message stays in %s,"
                " unseen (configure failed_folder to move such messages aside)",
                self.name,
                uid,
                reason,
                count,
                self.options.mailbox,
            )
            return True
        log.error(
            "%s: UID %d: %s; giving up after %d attempts, moving it to %s",
            self.name,
            uid,
            reason,
            count,
            folder,
        )
        try:
            await self._move(client, uid, folder, mark_seen=False)
        except ImapCommandError as exc:
            log.error(
                "%s: UID %d could not be moved to %s (%s); it stays in %s",
                self.name,
                uid,
                folder,
                exc,
                self.options.mailbox,
            )
        return True

    async def _settle(self, client: ImapClient, uid: int, folder: str | None, what: str) -> None:
        """Mark a journaled message ``\\Seen`` and/or move it to ``folder``."""
        try:
            if folder is not None:
                await self._move(client, uid, folder, mark_seen=self.options.mark_seen)
            elif self.options.mark_seen:
                await client.add_flags(uid, _SEEN)
        except ImapCommandError as exc:
            # The message is safely journaled; leaving it unmarked is untidy, not lossy.
            log.error("%s: UID %d is %s but could not be marked: %s", self.name, uid, what, exc)

    async def _move(self, client: ImapClient, uid: int, folder: str, *, mark_seen: bool) -> None:
        """Move ``uid`` to ``folder`` (creating it if needed); ``\\Seen`` first if asked."""
        if mark_seen:
            await client.add_flags(uid, _SEEN)
        try:
            await self._move_once(client, uid, folder)
        except ImapCommandError as exc:
            if exc.code != "TRYCREATE":  # RFC 3501 section 6.4.7: the target is missing
                raise
            log.info("%s: creating folder %s", self.name, folder)
            await client.create(folder)
            await self._move_once(client, uid, folder)

    async def _move_once(self, client: ImapClient, uid: int, folder: str) -> None:
        if client.has_capability("MOVE"):
            await client.move(uid, folder)  # RFC 6851: atomic
            return
        await client.copy(uid, folder)
        await client.add_flags(uid, _DELETED)
        if client.has_capability("UIDPLUS"):
            await client.uid_expunge(uid)  # RFC 4315: only this message
        # Without UIDPLUS a plain EXPUNGE would also remove messages the user marked
        # \Deleted: leave the copy's original flagged for the user's client to expunge.
