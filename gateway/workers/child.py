"""The processing process: started, fed wake-ups and supervised by the intake process.

Why two processes (issue 5): Python runs one thread of bytecode at a time, so a single
process spends one CPU core on everything - reading SMTP DATA, journaling, deciding,
composing and sending.  With ``gateway.processing_process`` the ``serve`` process
keeps intake (SMTP/LMTP listeners, IMAP pollers: everything that must answer a client
quickly) and starts ``imip-gateway serve --role processing`` as its child for the
journal processing and the outbox; each gets its own core.

The design stays as durable as one process because the two share nothing but the
database: the journal row committed before the 250 is the queue, and the pipe to the
child's stdin carries only wake-up hints (:mod:`gateway.workers.wakeup`).

* Start: the child checks (or upgrades) the database schema before it prints READY,
  and the intake process opens its listeners only after that first READY
  (:class:`gateway.daemon.Gated`).  A first child that exits before READY (wrong
  schema, unreadable database) fails the daemon at once: ``serve`` exits 1 without
  ever listening, and the child's own error is on the shared stderr.
* The child dies later (crash, OOM kill): its claimed rows stay leased and are
  processed again when the lease expires; this runnable starts a new child after a
  back-off while intake goes on.  A child that keeps dying right after its start
  (e.g. the database became unreadable) fails the daemon instead, so its supervisor
  sees it.
* The parent dies, even by SIGKILL: the child reads end of file on stdin, drains and
  exits (no orphan).
* SIGTERM: the parent stops its listeners and asks the child to drain (SIGTERM, then
  SIGKILL after ``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from gateway.workers.wakeup import READY_LINE, WAKE_JOURNAL, WAKE_OUTBOX

__all__ = ["ChildProcess", "ChildProcessFailed"]

log = logging.getLogger(__name__)


class ChildProcessFailed(RuntimeError):
    """The processing process exited before its first READY, or keeps exiting."""


class ChildProcess:
    """A :class:`~gateway.daemon.Runnable` owning one supervised child process."""

    name = "processing-process"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        drain_timeout: float,
        restart_initial_seconds: float = 1.0,
        restart_max_seconds: float = 30.0,
        stable_after_seconds: float = 30.0,
        max_quick_failures: int = 5,
    ) -> None:
        self.argv = list(argv)
        self.drain_timeout = drain_timeout
        self.restart_initial_seconds = restart_initial_seconds
        self.restart_max_seconds = restart_max_seconds
        # A child that ran this long before dying counts as a fresh failure, not
        # as one more of a crash loop.
        self.stable_after_seconds = stable_after_seconds
        self.max_quick_failures = max_quick_failures
        self.ready = asyncio.Event()
        self.starts = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id (None between restarts)."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    # --- wake-ups (called on the event loop by intake; never block, never raise) ------

    def wake_journal(self, _journal_id: int | None = None) -> None:
        """A message was journaled."""
        self._hint(WAKE_JOURNAL)

    def wake_outbox(self) -> None:
        """Intake queued outgoing mail itself (content-filter hand-back)."""
        self._hint(WAKE_OUTBOX)

    def _hint(self, hint: bytes) -> None:
        proc = self._proc
        stdin = proc.stdin if proc is not None else None
        if stdin is None or stdin.is_closing():
            return  # between restarts: the new child processes the journal on start
        transport = stdin.transport
        # Hints coalesce: while earlier bytes still wait in our buffer (the child is
        # busy), one more adds nothing, and the buffer never grows without bound.
        if transport.get_write_buffer_size() > 64:
            return
        with contextlib.suppress(Exception):
            stdin.write(hint)

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        delay = self.restart_initial_seconds
        quick_failures = 0
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
            self._proc = proc
            self.starts += 1
            log.info("started the processing process (pid %d)", proc.pid)
            code = await self._supervise(proc, stopping)
            if stopping.is_set():
                return
            ran = loop.time() - started
            if not self.ready.is_set():
                # Nothing listens yet and a restart would fail the same way (the usual
                # cause is the schema check): stop now, with the status in the log.
                log.error(
                    "the processing process (pid %d) exited with status %s before it was"
                    " ready; not starting intake (its own error is logged above)",
                    proc.pid,
                    code,
                )
                raise ChildProcessFailed(
                    f"the processing process exited with status {code} before it was ready"
                )
            if ran >= self.stable_after_seconds:
                quick_failures, delay = 0, self.restart_initial_seconds
            quick_failures += 1
            log.error(
                "the processing process (pid %d) exited with status %s after %.1fs;"
                " restarting in %.1fs (messages it held are processed again when their"
                " lease expires)",
                proc.pid,
                code,
                ran,
                delay,
            )
            if quick_failures >= self.max_quick_failures:
                raise ChildProcessFailed(
                    f"the processing process exited {quick_failures} times in a row"
                    f" (last status {code}); see its log lines above"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            delay = min(delay * 2, self.restart_max_seconds)

    async def _supervise(
        self, proc: asyncio.subprocess.Process, stopping: asyncio.Event
    ) -> int | None:
        """Wait for the child to exit or for shutdown; returns the exit status."""
        reader = asyncio.ensure_future(self._read_stdout(proc))
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                # A READY written just before the exit still counts: read to the end.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), timeout=1.0)
                return exited.result()
            return await self._stop(proc, exited)
        finally:
            stop.cancel()
            reader.cancel()
            if not exited.done():
                exited.cancel()

    async def _stop(
        self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]
    ) -> int | None:
        """Ask the child to drain (SIGTERM + end of stdin); kill it after the timeout."""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            return await asyncio.wait_for(asyncio.shield(exited), timeout=self.drain_timeout)
        except TimeoutError:
            log.warning(
                "the processing process (pid %d) did not drain in %.0fs; killing it",
                proc.pid,
                self.drain_timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return await exited

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            if line == READY_LINE:
                log.info("the processing process (pid %d) is ready", proc.pid)
                self.ready.set()
