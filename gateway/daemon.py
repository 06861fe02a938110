"""Daemon lifecycle: run servers and workers in one TaskGroup, drain on SIGTERM/SIGINT.

Every long-running part (SMTP/LMTP listener, IMAP poller, outbox worker, ...) is a
:class:`Runnable`.  They share one ``stopping`` event:

* SIGTERM or SIGINT sets it; each runnable then stops accepting new work, finishes
  (or releases) what it holds and returns.  When all have returned,
  :func:`run_daemon` returns normally and the process exits 0.
* A second signal, or ``drain_timeout`` seconds after the first, cancels whatever is
  still running, so shutdown never hangs.  Nothing is lost by that: work is only
  acknowledged after it is durable (ARCHITECTURE.md section 6).
* A runnable that raises (or returns before shutdown was requested) is logged, the
  others are asked to drain, and :func:`run_daemon` raises :class:`DaemonFailure`, so
  the process exits non-zero and the supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

__all__ = ["DaemonFailure", "Gated", "Runnable", "run_daemon"]

log = logging.getLogger(__name__)


class Runnable(Protocol):
    """A long-running part of the daemon.

    A runnable may also have a ``ready`` attribute (an :class:`asyncio.Event`) that it
    sets once it accepts work (e.g. its socket is bound); the daemon announces
    "ready" only when every such event is set, so the line means what it says.
    """

    @property
    def name(self) -> str:
        """Short name used in logs ("smtp", "outbox", "imap:alice")."""
        ...

    async def run(self, stopping: asyncio.Event) -> None:
        """Run until ``stopping`` is set, then stop accepting, drain and return."""
        ...


class Gated:
    """A runnable that starts ``runnable`` only once ``gate`` is set.

    The split daemon opens its listeners only after the processing process said READY
    (it checks the schema first), so no client gets a 250 for a message this version
    could not process.  Shutdown before the gate opens returns without starting it.
    """

    def __init__(self, runnable: Runnable, gate: asyncio.Event) -> None:
        self.runnable = runnable
        self.gate = gate
        inner = getattr(runnable, "ready", None)
        # The daemon's "ready" line waits for the inner runnable's own readiness (its
        # socket bound); one without any is ready once it started.
        self.ready: asyncio.Event = inner if isinstance(inner, asyncio.Event) else asyncio.Event()
        self._own_ready = not isinstance(inner, asyncio.Event)

    @property
    def name(self) -> str:
        return self.runnable.name

    async def run(self, stopping: asyncio.Event) -> None:
        gate = asyncio.ensure_future(self.gate.wait())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({gate, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gate.cancel()
            stop.cancel()
        if stopping.is_set():
            return
        if self._own_ready:
            self.ready.set()
        await self.runnable.run(stopping)


class DaemonFailure(Exception):
    """One or more runnables failed; the daemon stopped.  ``failures`` names them."""

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = tuple(failures)
        names = ", ".join(f"{name} ({reason})" for name, reason in self.failures)
        super().__init__(f"daemon stopped because of failed runnables: {names}")


async def _wait_true(event: asyncio.Event) -> None:
    await event.wait()


async def run_daemon(
    runnables: Sequence[Runnable],
    *,
    drain_timeout: float,
    stopping: asyncio.Event | None = None,
    handle_signals: bool = True,
    label: str = "imip-gateway",
) -> None:
    """Run ``runnables`` until SIGTERM/SIGINT (or ``stopping`` is set), then drain.

    Returns normally after a requested shutdown; raises :class:`DaemonFailure` when a
    runnable crashed.  ``stopping`` may be passed in to stop the daemon from code
    (tests, an embedding application); ``handle_signals=False`` leaves signals alone.
    """
    loop = asyncio.get_running_loop()
    stopping = stopping if stopping is not None else asyncio.Event()
    force = asyncio.Event()
    failures: list[tuple[str, str]] = []

    def on_signal(signum: signal.Signals) -> None:
        if stopping.is_set():
            log.warning("received %s again: cancelling what is still running", signum.name)
            force.set()
        else:
            log.info("received %s: stopping (draining for up to %gs)", signum.name, drain_timeout)
            stopping.set()

    installed: list[signal.Signals] = []
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)

    async def supervise(runnable: Runnable) -> None:
        try:
            await runnable.run(stopping)
        except Exception as exc:
            log.error("%s crashed; stopping the daemon", runnable.name, exc_info=exc)
            failures.append((runnable.name, f"{type(exc).__name__}: {exc}"))
            stopping.set()
            return
        if not stopping.is_set():
            # A listener that quietly stopped would leave a daemon that looks alive
            # but accepts nothing: treat it as a failure so the supervisor restarts us.
            log.error("%s returned before shutdown was requested; stopping", runnable.name)
            failures.append((runnable.name, "returned before shutdown was requested"))
            stopping.set()
        else:
            log.info("%s stopped", runnable.name)

    async def watchdog(tasks: Sequence[asyncio.Task[None]]) -> None:
        await stopping.wait()
        if not tasks:
            return
        force_wait: asyncio.Future[None] = asyncio.ensure_future(_wait_true(force))
        try:
            deadline = loop.time() + drain_timeout
            remaining: set[asyncio.Future[None]] = set(tasks)
            while remaining and not force.is_set():
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                done, _ = await asyncio.wait(
                    [*remaining, force_wait], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                remaining -= done
            pending = [t for t in tasks if not t.done()]
            if pending:
                names = ", ".join(t.get_name() for t in pending)
                log.warning("drain did not finish, cancelling: %s", names)
                for task in pending:
                    task.cancel()
        finally:
            force_wait.cancel()

    async def announce_ready() -> None:
        events = [e for r in runnables if isinstance(e := getattr(r, "ready", None), asyncio.Event)]
        waits = [asyncio.ensure_future(_wait_true(e)) for e in events]
        stop = asyncio.ensure_future(_wait_true(stopping))
        try:
            pending: set[asyncio.Future[None]] = set(waits)
            while pending and not stopping.is_set():
                done, _ = await asyncio.wait([*pending, stop], return_when=asyncio.FIRST_COMPLETED)
                pending -= done
            if not stopping.is_set():
                names = ", ".join(r.name for r in runnables) or "no runnables"
                log.info("%s ready (%s)", label, names)
        finally:
            for future in (*waits, stop):
                future.cancel()

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(supervise(r), name=r.name) for r in runnables]
            group.create_task(watchdog(tasks), name="watchdog")
            group.create_task(announce_ready(), name="announce-ready")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    if failures:
        raise DaemonFailure(failures)
    log.info("%s stopped cleanly", label)
