"""The background loops that process journaled messages.

Two transactions per message, on purpose: the claim (status ``processing``,
``attempts + 1``, a short lease) commits first, then the whole decision commits with the
``done`` outcome.  A crash or SIGKILL in between leaves the row leased; it is claimed
again when the lease expires, and because the decision's effects and ``done`` commit
atomically it is applied exactly once.  Counting attempts before processing means a
message that kills the process every time is quarantined after ``max_attempts`` instead
of looping forever.

Concurrency (``gateway.processing_concurrency``, PostgreSQL only): ``concurrency`` drain
loops run side by side, each claiming its own batch (``FOR UPDATE SKIP LOCKED`` makes the
claims disjoint).  That is exactly what several replicas sharing one database do, so the
same guarantees hold: two messages about one event serialise on the (owner, UID)
advisory lock and object row lock, and an early REPLY/CANCEL is held and replayed when
its REQUEST commits (RFC 5546 section 5.2).  What concurrency adds is lock-order
deadlocks between two batches (two events, or two correspondents' rate-limit rows,
locked in opposite orders): PostgreSQL aborts one statement with ``deadlock_detected``.
The processor rolls that message back to its savepoint without recording a failure and
stops the group there; the group commits (freeing the locks the winner waits for) and
this worker retries the row at once in a new transaction - a lost lock race never counts
towards quarantine.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from datetime import datetime

from gateway.services.processor import PartResult, PreparedMessage, Processor
from gateway.store import Store
from gateway.store.tx import is_transient_error

__all__ = ["ProcessingWorker"]

log = logging.getLogger(__name__)

# A row that lost this many lock races in a row (each one resolved by PostgreSQL in
# favour of another transaction) is recorded as a failed attempt after all, so that a
# pathological case ends in quarantine after ``max_attempts`` instead of spinning.
MAX_TRANSIENT_RETRIES = 8


class ProcessingWorker:
    """A daemon :class:`~gateway.daemon.Runnable` draining the journal."""

    name = "processor"

    def __init__(
        self,
        store: Store,
        processor: Processor,
        clock: Callable[[], datetime],
        *,
        batch: int = 16,
        group_seconds: float = 0.02,
        poll_seconds: float = 2.0,
        on_queued: Callable[[], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        self.store = store
        self.processor = processor
        self.clock = clock
        self.batch = batch
        # Group commit by elapsed time: several small messages share a commit, a big one
        # commits alone, and the write lock is never held long (intake waits for it).
        self.group_seconds = group_seconds
        self.poll_seconds = poll_seconds
        self.on_queued = on_queued
        self.concurrency = concurrency
        # Wake-up hints: ``notify`` bumps the counter and wakes ONE idle loop (each idle
        # loop waits on its own event), so a single journaled message does not send
        # every loop to an empty claim.  A loop compares the counter before and after
        # an empty claim, so a hint arriving during the claim is never lost.
        self._hints = 0
        self._idle: deque[asyncio.Event] = deque()
        self.processed = 0

    def notify(self, _journal_id: int | None = None) -> None:
        """Wake a loop: a message was just journaled."""
        self._hints += 1
        self._wake_one()

    def _wake_one(self) -> None:
        if self._idle:
            self._idle.popleft().set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Process until ``stopping`` is set; the batches in hand are always finished."""
        loops = [
            asyncio.create_task(self._loop(stopping), name=f"processor-{i}")
            for i in range(self.concurrency)
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            hints = self._hints
            try:
                done = await self.drain_once()
            except Exception as exc:
                if is_transient_error(exc):
                    log.warning("processing pass lost a lock race; retrying: %s", exc)
                    continue
                # The database may be down: keep the daemon alive and try again later.
                log.exception("processing pass failed; retrying in %.1fs", self.poll_seconds)
                done = 0
                hints = self._hints  # no busy retry on the hint that found a dead database
            if done:
                if done >= self.batch:
                    # A full batch: more is probably waiting, let an idle loop help.
                    self._wake_one()
                continue
            if self._hints != hints:
                continue  # journaled while we claimed: claim again before sleeping
            wake = asyncio.Event()
            self._idle.append(wake)
            waiter = asyncio.ensure_future(wake.wait())
            stopper = asyncio.ensure_future(stopping.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
                stopper.cancel()
                if wake in self._idle:
                    self._idle.remove(wake)

    async def drain_once(self) -> int:
        """Claim one batch and process it in one transaction; returns how many rows.

        Two commits per batch (claim, then every decision of the batch together) instead
        of one per message: the group commit of issue 5.  A message that fails is rolled
        back to its savepoint and recorded; the others still commit.  A message that lost
        a lock race (deadlock, serialization failure) ends its group uncounted and is
        retried first in the next group.
        """
        ids = await self.store.run(self.processor.claim, self.clock(), self.batch)
        prepared = await self._prepare(ids)
        remaining = list(ids)
        stalls = 0
        while remaining:
            try:
                items = await self.store.run(
                    self.processor.process_batch,
                    remaining,
                    self.clock(),
                    self.group_seconds,
                    prepared,
                )
            except Exception as exc:
                if not is_transient_error(exc):
                    raise
                # The whole group rolled back (the error hit outside a message's
                # savepoint): every row is still claimed, retry them all.
                log.warning("processing group lost a lock race; retrying: %s", exc)
                items = []
            if not items:
                # The time budget always lets one row through, so an empty group means
                # its first row lost a lock race (process_batch logged it).
                stalls += 1
                if stalls > MAX_TRANSIENT_RETRIES:
                    await self._give_up(remaining[0])
                    # The rest stay leased and are claimed again when the lease expires:
                    # they must not overtake the row given up on (same event, perhaps).
                    return len(ids)
                # Back off a little (jittered) so two loops that keep colliding on the
                # same rows fall out of step.
                await asyncio.sleep(random.uniform(0, 0.005 * stalls))
                continue
            stalls = 0
            done = {item.journal_id for item in items}
            remaining = [i for i in remaining if i not in done]
            queued = 0
            for item in items:
                queued += item.queued
                if item.error:
                    continue
                self.processed += 1
                self._log(item.journal_id, item.results)
            # Each group's mail is handed to the outbox as soon as the group commits.
            if queued and self.on_queued is not None:
                self.on_queued()
        return len(ids)

    async def _prepare(self, ids: list[int]) -> dict[int, PreparedMessage]:
        """Extract and parse the claimed rows before the write transaction (issue 5).

        Done in a read-only transaction on the store thread (no write lock on SQLite),
        so the SMTP intake can journal (and answer 250) meanwhile instead of waiting for
        a group that parses under the database's single write lock.  Not in a thread of
        its own: measured end to end, a third thread contending for the GIL cost more
        CPU per message than the lock it freed (REQUEST -20% msg/s).  Best effort:
        whatever is not prepared here is extracted inside the group as before.
        """
        if not ids:
            return {}
        try:
            return await self.store.read(self.processor.prepare_claimed, ids)
        except Exception:
            log.exception("preparing %d claimed rows failed; processing them unprepared", len(ids))
            return {}

    async def _give_up(self, journal_id: int) -> None:
        error = (
            f"lost {MAX_TRANSIENT_RETRIES + 1} lock races in a row"
            " (deadlock or serialization failure)"
        )
        log.error("journal row %s: %s; recorded as a failed attempt", journal_id, error)
        await self.store.run(self.processor.fail_row, journal_id, error, self.clock())

    async def process_one(self, journal_id: int) -> list[PartResult]:
        """Process one claimed row; failures are recorded, never raised."""
        try:
            results = await self._process_row_retrying(journal_id)
        except Exception as exc:
            log.exception("processing journal row %s failed", journal_id)
            error = f"{type(exc).__name__}: {exc}"
            try:
                await self.store.run(self.processor.fail_row, journal_id, error, self.clock())
            except Exception:
                log.exception("could not record the failure of journal row %s", journal_id)
            return []
        self.processed += 1
        if self.on_queued is not None:
            self.on_queued()
        self._log(journal_id, results)
        return results

    async def _process_row_retrying(self, journal_id: int) -> list[PartResult]:
        # A lost lock race (deadlock, serialization failure) is retried at once rather
        # than recorded as a failed attempt; the last one is raised to the caller.
        for attempt in range(MAX_TRANSIENT_RETRIES + 1):
            try:
                return await self.store.run(self.processor.process_row, journal_id, self.clock())
            except Exception as exc:
                if attempt == MAX_TRANSIENT_RETRIES or not is_transient_error(exc):
                    raise
                log.warning("journal row %s: transient failure, retrying: %s", journal_id, exc)
        raise AssertionError("unreachable")

    @staticmethod
    def _log(journal_id: int, results: list[PartResult]) -> None:
        for res in results:
            log.info(
                "journal %s part %s for %s: %s %s %s: %s",
                journal_id,
                res.part_index,
                res.recipient or "-",
                res.method or "-",
                res.uid or "-",
                res.outcome,
                res.reason,
            )
