"""The processing process's supervision and wake-up pipe, with real child processes.

The child here is a small Python program speaking the same protocol as
``imip-gateway serve --role processing`` (READY on stdout, hint bytes on stdin), so
each property is shown in well under a second: hints arrive, a dead child is
restarted, a crash loop fails the daemon, a first child that dies before READY fails
it at once, intake waits for that first READY, SIGTERM drains and a child that
ignores it is killed, and a child whose parent vanished (stdin closed) stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.daemon import Gated
from gateway.workers.child import ChildProcess, ChildProcessFailed
from gateway.workers.wakeup import READY_LINE, WAKE_JOURNAL, WAKE_OUTBOX, WakeListener

# Records every hint byte it reads in a file; exits on end of stdin with status 0.
CHILD = r"""
import os, signal, sys
out = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else ""
if mode == "crash":
    sys.exit(3)
if mode == "ready-then-crash":
    sys.stdout.buffer.write(b"READY\n")
    sys.stdout.buffer.flush()
    sys.exit(4)
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(out + ".pids", "a") as fh:
    fh.write(f"{os.getpid()}\n")
sys.stdout.buffer.write(b"READY\n")
sys.stdout.buffer.flush()
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        if mode == "ignore-term":
            import time
            time.sleep(60)
        sys.exit(0)
    with open(out, "ab") as fh:
        fh.write(chunk)
"""


def _argv(tmp_path: Path, mode: str = "") -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(tmp_path / "hints"), mode]


async def _until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def _pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "hints.pids"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def test_hints_reach_the_child_and_ready_is_announced(tmp_path: Path) -> None:
    child = ChildProcess(_argv(tmp_path), drain_timeout=5)
    stopping = asyncio.Event()
    task = asyncio.create_task(child.run(stopping))
    await asyncio.wait_for(child.ready.wait(), 10)
    child.wake_journal(1)
    child.wake_outbox()
    hints = tmp_path / "hints"
    await _until(lambda: hints.exists() and b"o" in hints.read_bytes())
    assert set(hints.read_bytes()) == {WAKE_JOURNAL[0], WAKE_OUTBOX[0]}
    stopping.set()
    await asyncio.wait_for(task, 10)
    assert child.pid is None


async def test_a_child_that_dies_is_restarted_and_hints_go_to_the_new_one(
    tmp_path: Path,
) -> None:
    child = ChildProcess(_argv(tmp_path), drain_timeout=5, restart_initial_seconds=0.05)
    stopping = asyncio.Event()
    task = asyncio.create_task(child.run(stopping))
    await asyncio.wait_for(child.ready.wait(), 10)
    first = child.pid
    assert first is not None
    os.kill(first, 9)
    await _until(lambda: child.pid not in (None, first))
    assert child.starts == 2
    await _until(lambda: len(_pids(tmp_path)) == 2)
    child.wake_journal()
    hints = tmp_path / "hints"
    await _until(lambda: hints.exists() and b"j" in hints.read_bytes())
    stopping.set()
    await asyncio.wait_for(task, 10)


async def test_a_crash_loop_fails_the_daemon_instead_of_spinning(tmp_path: Path) -> None:
    child = ChildProcess(
        _argv(tmp_path, "ready-then-crash"),
        drain_timeout=5,
        restart_initial_seconds=0.01,
        max_quick_failures=3,
    )
    with pytest.raises(ChildProcessFailed, match=r"3 times in a row \(last status 4\)"):
        await asyncio.wait_for(child.run(asyncio.Event()), 20)
    assert child.starts == 3
    assert child.ready.is_set()


async def test_a_first_child_that_exits_before_ready_fails_at_once_with_its_status(
    tmp_path: Path,
) -> None:
    # Its schema check failed, say: a restart would fail the same way, and nothing
    # listens yet, so the daemon stops instead of retrying.
    child = ChildProcess(_argv(tmp_path, "crash"), drain_timeout=5, restart_initial_seconds=0.01)
    with pytest.raises(ChildProcessFailed, match="exited with status 3 before it was ready"):
        await asyncio.wait_for(child.run(asyncio.Event()), 20)
    assert child.starts == 1
    assert not child.ready.is_set()


class _Recorder:
    """A runnable that records that it ran and then waits for shutdown."""

    name = "recorder"

    def __init__(self) -> None:
        self.started = False

    async def run(self, stopping: asyncio.Event) -> None:
        self.started = True
        await stopping.wait()


async def test_intake_starts_only_after_the_first_ready_and_not_at_all_on_failure(
    tmp_path: Path,
) -> None:
    child = ChildProcess(_argv(tmp_path), drain_timeout=5)
    inner = _Recorder()
    gated = Gated(inner, child.ready)
    stopping = asyncio.Event()
    gated_task = asyncio.create_task(gated.run(stopping))
    await asyncio.sleep(0.1)
    assert not inner.started
    assert not gated.ready.is_set()
    child_task = asyncio.create_task(child.run(stopping))
    await asyncio.wait_for(gated.ready.wait(), 10)
    assert inner.started
    assert child.ready.is_set()
    stopping.set()
    await asyncio.wait_for(asyncio.gather(child_task, gated_task), 10)

    # Shutdown (e.g. the failed child stopped the daemon) before the gate opened.
    never = _Recorder()
    stopped = asyncio.Event()
    stopped.set()
    await asyncio.wait_for(Gated(never, asyncio.Event()).run(stopped), 5)
    assert not never.started


async def test_shutdown_kills_a_child_that_does_not_drain_in_time(tmp_path: Path) -> None:
    child = ChildProcess(_argv(tmp_path, "ignore-term"), drain_timeout=0.5)
    stopping = asyncio.Event()
    task = asyncio.create_task(child.run(stopping))
    await asyncio.wait_for(child.ready.wait(), 10)
    pid = child.pid
    assert pid is not None
    stopping.set()
    await asyncio.wait_for(task, 10)
    # Reaped: the process no longer exists.
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_wake_listener_dispatches_hints_and_stops_when_its_parent_goes(
    tmp_path: Path,
) -> None:
    read_fd, write_fd = os.pipe()
    out_r, out_w = os.pipe()
    seen: list[str] = []
    listener = WakeListener(
        {WAKE_JOURNAL: lambda: seen.append("journal"), WAKE_OUTBOX: lambda: seen.append("outbox")},
        stdin=os.fdopen(read_fd, "rb", buffering=0),
        stdout=os.fdopen(out_w, "wb"),
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(listener.run(stopping))
    await asyncio.wait_for(listener.ready.wait(), 5)
    assert os.read(out_r, 100) == READY_LINE
    os.write(write_fd, b"jjx")  # an unknown byte is ignored
    await _until(lambda: seen == ["journal"])
    os.write(write_fd, b"o")
    await _until(lambda: seen == ["journal", "outbox"])
    assert not stopping.is_set()
    os.close(write_fd)  # the intake process is gone
    await asyncio.wait_for(task, 5)
    assert stopping.is_set()
    os.close(out_r)
