"""CPU time and memory of a process tree, read from /proc (Linux).

* CPU: ``utime + stime`` of the process and of every live descendant (a child that
  already exited is counted through the parent's ``cutime/cstime``), in seconds;
* memory: ``VmRSS`` summed over the tree, and the largest ``VmHWM`` seen (peak RSS).

:class:`RssSampler` polls the tree every ``interval`` seconds in a thread, so a run
gets its RSS over time (for the growth check) without the daemon's cooperation.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

__all__ = ["RssSampler", "cpu_seconds", "descendants", "rss_kb"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        out.append(cur)
        todo.extend(children.get(cur, []))
    return out


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (and its live descendants, and reaped ones)."""
    total = 0.0
    for p in descendants(pid) if tree else [pid]:
        fields = _stat_fields(p)
        if fields is None:
            continue
        # fields[11..14] = utime, stime, cutime, cstime (stat fields 14-17).
        total += sum(int(v) for v in fields[11:15]) / _TICKS
    return total


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> tuple[int, int]:
    """(current VmRSS summed over the tree, largest VmHWM in the tree) in KiB."""
    pids = descendants(pid)
    return sum(_status_kb(p, "VmRSS:") for p in pids), max(
        (_status_kb(p, "VmHWM:") for p in pids), default=0
    )


@dataclass
class RssSampler:
    """Samples ``(time.time(), rss_kb)`` of a process tree until stopped."""

    pid: int
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)
    peak_hwm_kb: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _sample(self) -> None:
        rss, hwm = rss_kb(self.pid)
        if rss:
            self.samples.append((time.time(), rss))
            self.peak_hwm_kb = max(self.peak_hwm_kb, hwm, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def between(self, start: float, end: float) -> list[int]:
        """RSS samples (KiB) taken in ``[start, end]``."""
        return [kb for t, kb in self.samples if start <= t <= end]
