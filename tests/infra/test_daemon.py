"""Daemon lifecycle: drain on stop and on SIGTERM/SIGINT, crashes bring it down, no hangs."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field

import pytest

from gateway.daemon import DaemonFailure, run_daemon

# Guards against a hanging daemon; the tests assert outcomes, not durations.
GUARD = 30


@dataclass
class Worker:
    """Runs until asked to stop, then takes ``drain`` seconds of "in-flight work"."""

    name: str
    drain: float = 0.0
    events: list[str] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stopping: asyncio.Event) -> None:
        self.events.append("started")
        self.started.set()
        try:
            await stopping.wait()
            self.events.append("draining")
            await asyncio.sleep(self.drain)
            self.events.append("drained")
        except asyncio.CancelledError:
            self.events.append("cancelled")
            raise


@dataclass
class Crasher:
    name: str = "crasher"

    async def run(self, stopping: asyncio.Event) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("listener socket vanished")


@dataclass
class Quitter:
    name: str = "quitter"

    async def run(self, stopping: asyncio.Event) -> None:
        return


@dataclass
class Stubborn:
    """Ignores ``stopping``: only cancellation ends it."""

    name: str = "stubborn"
    cancelled: bool = False

    async def run(self, stopping: asyncio.Event) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


async def _when_started(*workers: Worker) -> None:
    for worker in workers:
        await worker.started.wait()


async def test_setting_stopping_drains_every_runnable_and_returns() -> None:
    a, b = Worker("a", drain=0.05), Worker("b")
    stopping = asyncio.Event()

    async def stop_later() -> None:
        await _when_started(a, b)
        stopping.set()

    async with asyncio.timeout(GUARD):
        await asyncio.gather(
            run_daemon([a, b], drain_timeout=GUARD, stopping=stopping, handle_signals=False),
            stop_later(),
        )
    assert a.events == ["started", "draining", "drained"]
    assert b.events == ["started", "draining", "drained"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_and_returns_normally(signum: signal.Signals) -> None:
    worker = Worker("w", drain=0.05)

    async def signal_later() -> None:
        await _when_started(worker)
        os.kill(os.getpid(), signum)

    async with asyncio.timeout(GUARD):
        await asyncio.gather(run_daemon([worker], drain_timeout=GUARD), signal_later())
    assert worker.events == ["started", "draining", "drained"]


async def test_signal_handlers_are_removed_afterwards() -> None:
    stopping = asyncio.Event()
    stopping.set()
    await run_daemon([], drain_timeout=1, stopping=stopping)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_crash_drains_the_others_and_raises() -> None:
    survivor = Worker("survivor")
    async with asyncio.timeout(GUARD):
        with pytest.raises(DaemonFailure) as err:
            await run_daemon([survivor, Crasher()], drain_timeout=GUARD, handle_signals=False)
    assert err.value.failures == (("crasher", "RuntimeError: listener socket vanished"),)
    assert survivor.events == ["started", "draining", "drained"]


async def test_runnable_returning_before_shutdown_is_a_failure() -> None:
    other = Worker("other")
    async with asyncio.timeout(GUARD):
        with pytest.raises(DaemonFailure) as err:
            await run_daemon([Quitter(), other], drain_timeout=GUARD, handle_signals=False)
    assert err.value.failures[0][0] == "quitter"
    assert other.events[-1] == "drained"


async def test_drain_timeout_cancels_what_does_not_stop() -> None:
    stubborn = Stubborn()
    polite = Worker("polite")
    stopping = asyncio.Event()
    stopping.set()
    async with asyncio.timeout(GUARD):
        await run_daemon(
            [stubborn, polite], drain_timeout=0.1, stopping=stopping, handle_signals=False
        )
    assert stubborn.cancelled
    assert polite.events == ["started", "draining", "drained"]


async def test_second_signal_cancels_at_once() -> None:
    slow = Worker("slow", drain=3600)

    async def signal_twice() -> None:
        await _when_started(slow)
        os.kill(os.getpid(), signal.SIGTERM)
        while "draining" not in slow.events:
            await asyncio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    async with asyncio.timeout(GUARD):
        await asyncio.gather(run_daemon([slow], drain_timeout=3600), signal_twice())
    assert slow.events == ["started", "draining", "cancelled"]


async def test_no_runnables_waits_for_stop() -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(
        run_daemon([], drain_timeout=1, stopping=stopping, handle_signals=False)
    )
    await asyncio.sleep(0.05)
    assert not task.done()
    stopping.set()
    async with asyncio.timeout(GUARD):
        await task


@dataclass
class SlowStarter:
    """Binds "late": sets ``ready`` only when the test allows it."""

    name: str = "slow-starter"
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    allow: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stopping: asyncio.Event) -> None:
        await self.allow.wait()
        self.ready.set()
        await stopping.wait()


def _ready_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any("imip-gateway ready" in r.getMessage() for r in caplog.records)


async def test_ready_is_announced_only_when_every_runnable_is_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="gateway.daemon")
    starter = SlowStarter()
    stopping = asyncio.Event()
    task = asyncio.create_task(
        run_daemon(
            [starter, Worker("plain")], drain_timeout=GUARD, stopping=stopping, handle_signals=False
        )
    )
    for _ in range(20):
        await asyncio.sleep(0)
    assert not _ready_logged(caplog)
    starter.allow.set()
    async with asyncio.timeout(GUARD):
        while not _ready_logged(caplog):
            await asyncio.sleep(0.01)
    stopping.set()
    async with asyncio.timeout(GUARD):
        await task


async def test_ready_is_not_announced_when_a_runnable_fails_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="gateway.daemon")
    async with asyncio.timeout(GUARD):
        with pytest.raises(DaemonFailure):
            await run_daemon([SlowStarter(), Crasher()], drain_timeout=0.1, handle_signals=False)
    assert not _ready_logged(caplog)
