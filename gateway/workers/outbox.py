"""The outbox worker: lease due rows, send them through the relay, record what happened.

Outgoing iMIP mail (RFC 6047) is written to the outbox in the same transaction as the
scheduling change that caused it; this worker delivers it (ARCHITECTURE.md section 6):

* rows are **claimed with a lease** (:func:`gateway.store.outbox.claim_due`); a worker
  that crashes mid-send leaves its rows leased, and once the lease expires any worker
  (on any replica) claims them again.  Delivery is therefore at-least-once: a crash after
  the relay's 250 but before ``mark_sent`` sends the message again, which recipients
  tolerate (the same Message-ID, SEQUENCE and DTSTAMP make the repeat a no-op in iTIP);
* rows are claimed up to ``claim_batch`` at a time and wait in memory for a free
  connection (issue 5: one write transaction per two mails cost ~6% of the processing
  process's CPU and, on SQLite, a turn at the write lock).  A waiting row whose claim
  is older than half its lease is given back instead of sent (a slow relay must not let
  the lease expire under a row still queued here), and so are the waiting rows at
  shutdown (:func:`gateway.store.outbox.release`);
* at most ``max_connections`` sends run at once, matching the relay connection pool;
* a 2xx marks the row ``sent`` (it keeps the Message-ID it was composed with); the
  marks of sends that finish while one is being written are written together in the
  next transaction (group commit; a crash before it only means a repeat, as above);
* a 4xx reply or a network error (RFC 5321 section 4.2.1: transient) is retried with
  exponential backoff and jitter, from ``retry_initial_seconds`` doubling up to
  ``retry_max_seconds``; after ``max_age_hours`` the row is given up as ``failed``,
  like an MTA's maximal queue lifetime (RFC 5321 section 4.5.4.1);
* a 5xx reply is permanent: the row is ``failed`` at once, and ``on_permanent_failure``
  is called so the service can record SCHEDULE-STATUS/REQUEST-STATUS 5.x on the
  attendee (RFC 6638 section 3.2.9 / RFC 5546 section 3.6).  The same callback reports
  rows given up after ``max_age_hours`` (``expired=True``).

The worker sleeps until :meth:`OutboxWorker.notify` (new rows were committed) or a
short poll interval (rows that became due, leases that expired).  On shutdown it stops
claiming and waits (bounded) for the sends in flight; a send cut short keeps its lease
and is picked up again after it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

from gateway.services.ports import FORWARD_METHOD
from gateway.store import outbox
from gateway.store.facade import Store
from gateway.store.outbox import OutboxMessage

__all__ = [
    "Clock",
    "DeliveryResult",
    "FailedDelivery",
    "MailSender",
    "OutboxOptions",
    "OutboxWorker",
]

log = logging.getLogger(__name__)

#: Returns the current time as an aware UTC datetime (injected so tests can move it).
Clock = Callable[[], datetime]


class DeliveryResult(Protocol):
    """What a sender reports (:class:`gateway.transports.smtp_sender.SendResult`)."""

    @property
    def status(self) -> Literal["sent", "temporary", "permanent"]: ...

    @property
    def code(self) -> int | None: ...

    def describe(self) -> str: ...


class MailSender(Protocol):
    """Hands one message to the relay (:class:`gateway.transports.smtp_sender.RelaySender`)."""

    async def send(
        self, mail_from: str, rcpt_tos: Sequence[str], data: bytes
    ) -> DeliveryResult: ...


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A row that will not be delivered: refused with 5xx, or given up after max age."""

    row: OutboxMessage  # the row as claimed (a detached snapshot)
    code: int | None
    reason: str
    expired: bool  # True: temporary failures until max_age_hours; False: a 5xx


PermanentFailureCallback = Callable[[FailedDelivery], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class OutboxOptions:
    """Plain settings (the app maps ``[relay]`` onto it)."""

    max_connections: int = 2
    retry_initial_seconds: float = 60.0
    retry_max_seconds: float = 3600.0
    max_age_hours: float = 72.0
    # Must comfortably exceed one send (connect + transaction timeouts): a lease that
    # expires while the send is still running lets a second worker send it too.
    lease_seconds: float = 600.0
    poll_interval_seconds: float = 5.0
    # Envelope sender (RFC 5321 MAIL FROM) for every message; "" = the row's sender.
    # Pointing it at the gateway's own address routes bounces (RFC 3464) back to us.
    envelope_from: str = ""
    worker_id: str = ""  # lease owner name; "" = host:pid:random
    drain_seconds: float = 30.0
    # Rows leased per claim transaction; those beyond the free connections wait here.
    claim_batch: int = 16


class OutboxWorker:
    """A daemon ``Runnable`` delivering the outbox; see the module docstring."""

    name = "outbox"

    def __init__(
        self,
        store: Store,
        sender: MailSender,
        clock: Clock,
        options: OutboxOptions,
        on_permanent_failure: PermanentFailureCallback | None = None,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if options.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        # When the retries this worker scheduled fall due (a min-heap): each one must
        # wake it, not only the earliest (two rows failing together retry apart).
        self._retries: list[datetime] = []
        self._last_claim = datetime.min.replace(tzinfo=UTC)  # the clock at the last claim
        self._store = store
        self._sender = sender
        self._clock = clock
        self.options = options
        self._on_permanent_failure = on_permanent_failure
        self._rng = rng
        self.worker_id = options.worker_id or (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        # Claimed rows waiting for a connection, with the monotonic time of their claim.
        self._ready: deque[tuple[float, OutboxMessage]] = deque()
        # Rows the relay accepted whose ``sent`` mark is not written yet, and the task
        # writing them (module docstring: group commit).
        self._sent: list[OutboxMessage] = []
        self._marker: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """New rows were committed: look now instead of at the next poll.

        Call from the event loop thread (e.g. right after the unit of work returned).
        """
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._wake_on(stopping), name="outbox-stop-watch")
        log.info(
            "outbox worker %s started (%d concurrent sends)",
            self.worker_id,
            self.options.max_connections,
        )
        try:
            while not stopping.is_set():
                free = self.options.max_connections - len(self._inflight)
                if free <= 0:
                    # Every slot busy: wait for a send to finish (or for shutdown).
                    await asyncio.wait(
                        {*self._inflight, watcher}, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                # Clear before claiming: a notify() that arrives while we claim is kept
                # for the next round rather than lost.
                self._wake.clear()
                more = bool(self._ready)
                if not more:
                    limit = max(free, self.options.claim_batch)
                    rows = await self._claim(limit)
                    claimed_at = time.monotonic()
                    self._ready.extend((claimed_at, row) for row in rows)
                    more = len(rows) == limit  # there may be more due rows
                await self._start_ready()
                if more or self._ready:
                    continue  # claim again (or start the rest) once a slot frees
                await self._sleep()
        finally:
            watcher.cancel()
            await self._drain()

    # -- loop helpers ---------------------------------------------------------------------

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._wake.set()

    async def _sleep(self) -> None:
        # Sleep until the next poll, or until the earliest retry this worker scheduled is
        # due (a 4xx retry in 0.5 s must not wait for a 5 s poll); rows other replicas
        # scheduled are found by the poll.
        timeout = self.options.poll_interval_seconds
        while self._retries and self._retries[0] <= self._last_claim:
            heapq.heappop(self._retries)  # was due at the last claim, which took it
        if self._retries:
            until = (self._retries[0] - self._clock()).total_seconds()
            timeout = max(0.0, min(timeout, until))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _claim(self, limit: int) -> list[OutboxMessage]:
        self._last_claim = now = self._clock()
        try:
            return await self._store.run(
                outbox.claim_due,
                now=now,
                lease_owner=self.worker_id,
                lease_seconds=self.options.lease_seconds,
                limit=limit,
            )
        except Exception:
            # Database down: nothing is lost (rows stay due); try again at the next poll.
            log.exception("could not claim outbox rows; retrying at the next poll")
            return []

    async def _start_ready(self) -> None:
        stale: list[OutboxMessage] = []
        oldest = time.monotonic() - self.options.lease_seconds / 2
        while self._ready and len(self._inflight) < self.options.max_connections:
            claimed_at, row = self._ready.popleft()
            if claimed_at < oldest:
                stale.append(row)
            else:
                self._start(row)
        if stale:
            await self._release(stale)

    async def _release(self, rows: Sequence[OutboxMessage]) -> None:
        try:
            await self._store.run(
                outbox.release, [row.id for row in rows], lease_owner=self.worker_id
            )
        except Exception:
            # They stay leased and are claimed again when the lease expires.
            log.exception("could not give back %d claimed outbox rows", len(rows))

    def _start(self, row: OutboxMessage) -> None:
        task = asyncio.create_task(self._deliver(row), name=f"outbox-{row.id}")
        self._inflight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def _drain(self) -> None:
        if self._ready:
            # Claimed but never started: due again at once for the next worker.
            waiting = [row for _claimed_at, row in self._ready]
            self._ready.clear()
            await self._release(waiting)
        if self._inflight:
            log.info("outbox: waiting for %d send(s) in flight", len(self._inflight))
            _, pending = await asyncio.wait(set(self._inflight), timeout=self.options.drain_seconds)
            for task in pending:
                # The lease stays; the row is sent again after it expires.
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._marker is not None:
            await self._marker

    # -- one row ------------------------------------------------------------------------------

    async def _deliver(self, row: OutboxMessage) -> None:
        # Mail forwarded unchanged in relay mode keeps its author's envelope sender, so
        # its bounces reach the organiser; the gateway's own messages use ours, so their
        # bounces come back here and are mapped to the attendee (RFC 3464).
        if row.method == FORWARD_METHOD:
            mail_from = row.sender
        else:
            mail_from = self.options.envelope_from or row.sender
        try:
            result = await self._sender.send(mail_from, [row.recipient], row.payload)
        except Exception as exc:
            # A sender bug must not kill the worker; treat it as a temporary failure.
            log.exception("sender failed on outbox row %d", row.id)
            await self._retry_or_expire(row, None, f"sender error: {type(exc).__name__}: {exc}")
            return
        try:
            if result.status == "sent":
                await self._mark_sent(row)
            elif result.status == "permanent":
                await self._fail(row, result.code, result.describe(), expired=False)
            else:
                await self._retry_or_expire(row, result.code, result.describe())
        except Exception:
            # The store is unreachable: the row keeps its lease and is retried when it
            # expires (a sent message may then go out twice; see the module docstring).
            log.exception("could not record the outcome of outbox row %d", row.id)

    async def _mark_sent(self, row: OutboxMessage) -> None:
        self._sent.append(row)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._write_sent_marks(), name="outbox-marks")

    async def _write_sent_marks(self) -> None:
        """Write the queued ``sent`` marks, one transaction per group, until none is left."""
        while self._sent:
            group, self._sent = self._sent, []
            try:
                lost = set(
                    await self._store.run(
                        outbox.mark_sent_many,
                        [row.id for row in group],
                        self._clock(),
                        lease_owner=self.worker_id,
                    )
                )
            except Exception:
                # The rows keep their lease and are sent again when it expires.
                log.exception("could not record %d sent outbox rows", len(group))
                continue
            for row in group:
                if row.id in lost:
                    self._lease_lost(row)
                    continue
                log.info(
                    "sent outbox row %d (%s %s to %s, Message-ID %s, attempt %d)",
                    row.id,
                    row.method,
                    row.uid,
                    row.recipient,
                    row.message_id,
                    row.attempts,
                )

    async def _retry_or_expire(self, row: OutboxMessage, code: int | None, reason: str) -> None:
        now = self._clock()
        deadline = row.created_at + timedelta(hours=self.options.max_age_hours)
        if now >= deadline:
            given_up = (
                f"gave up after {row.attempts} attempts in "
                f"{self.options.max_age_hours:g} hours; last error: {reason}"
            )
            await self._fail(row, code, given_up, expired=True)
            return
        delay = outbox.backoff_delay(
            row.attempts,
            base_seconds=self.options.retry_initial_seconds,
            cap_seconds=self.options.retry_max_seconds,
            jitter=min(1.0, max(0.0, self._rng())),
        )
        # One last attempt at the deadline rather than none after it.
        next_attempt = min(now + delay, deadline)
        heapq.heappush(self._retries, next_attempt)
        ok = await self._store.run(
            outbox.mark_retry, row.id, reason, next_attempt, lease_owner=self.worker_id
        )
        if ok:
            log.warning(
                "outbox row %d to %s failed temporarily (attempt %d): %s; next try at %s",
                row.id,
                row.recipient,
                row.attempts,
                reason,
                next_attempt.isoformat(),
            )
        else:
            self._lease_lost(row)

    async def _fail(
        self, row: OutboxMessage, code: int | None, reason: str, *, expired: bool
    ) -> None:
        ok = await self._store.run(
            outbox.mark_failed, row.id, reason, self._clock(), lease_owner=self.worker_id
        )
        if not ok:
            self._lease_lost(row)
            return
        log.error("outbox row %d to %s failed permanently: %s", row.id, row.recipient, reason)
        callback = self._on_permanent_failure
        if callback is None:
            return
        try:
            outcome = callback(FailedDelivery(row=row, code=code, reason=reason, expired=expired))
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            log.exception("on_permanent_failure failed for outbox row %d", row.id)

    def _lease_lost(self, row: OutboxMessage) -> None:
        log.warning(
            "outbox row %d: lease of %s was lost (expired and re-claimed elsewhere); "
            "leaving the row to its new holder",
            row.id,
            self.worker_id,
        )
