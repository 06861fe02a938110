"""The background loop that processes journaled messages.

Two transactions per message, on purpose: the claim (status ``processing``,
``attempts + 1``, a short lease) commits first, then the whole decision commits with the
``done`` outcome.  A crash or SIGKILL in between leaves the row leased; it is claimed
again when the lease expires, and because the decision's effects and ``done`` commit
atomically it is applied exactly once.  Counting attempts before processing means a
message that kills the process every time is quarantined after ``max_attempts`` instead
of looping forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from gateway.services.processor import PartResult, Processor
from gateway.store import Store

__all__ = ["ProcessingWorker"]

log = logging.getLogger(__name__)


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
    ) -> None:
        self.store = store
        self.processor = processor
        self.clock = clock
        self.batch = batch
        # Group commit by elapsed time: several small messages share a commit, a big one
        # commits alone, and the write lock is never held long (intake waits for it).
        self.group_seconds = group_seconds
        self.poll_seconds = poll_seconds
        self.on_queued = on_queued
        self._wake = asyncio.Event()
        self.processed = 0

    def notify(self, _journal_id: int | None = None) -> None:
        """Wake the loop: a message was just journaled."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Process until ``stopping`` is set; the message in hand is always finished."""
        while not stopping.is_set():
            try:
                done = await self.drain_once()
            except Exception:
                # The database may be down: keep the daemon alive and try again later.
                log.exception("processing pass failed; retrying in %.1fs", self.poll_seconds)
                done = 0
            if done:
                continue
            self._wake.clear()
            waiter = asyncio.ensure_future(self._wake.wait())
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

    async def drain_once(self) -> int:
        """Claim one batch and process it in one transaction; returns how many rows.

        Two commits per batch (claim, then every decision of the batch together) instead
        of one per message: the group commit of issue 5.  A message that fails is rolled
        back to its savepoint and recorded; the others still commit.
        """
        ids = await self.store.run(self.processor.claim, self.clock(), self.batch)
        remaining = list(ids)
        while remaining:
            items = await self.store.run(
                self.processor.process_batch, remaining, self.clock(), self.group_seconds
            )
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

    async def process_one(self, journal_id: int) -> list[PartResult]:
        """Process one claimed row; failures are recorded, never raised."""
        try:
            results = await self.store.run(self.processor.process_row, journal_id, self.clock())
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
