"""Wake-ups between the intake process and the processing process, over two pipes.

With ``gateway.processing_process`` the daemon is two processes (see
:mod:`gateway.workers.child`): intake journals a message and the processing process
must learn of it without polling the database; the processing process queues replies
and the outbox, which runs in the intake process, must learn of those.  The journal
and the outbox tables are the durable queues; the pipes only carry *hints*:

* intake -> processing, one byte each on the child's stdin: ``j``, a message was
  journaled: process the journal now;
* processing -> intake, a line ``o`` on the child's stdout (after its ``READY``
  line): mail was queued: run the outbox.

A lost or coalesced hint costs latency, never a message: both workers still poll.
End of file on stdin means the intake process is gone (exited, or killed with
SIGKILL): the processing process then drains and exits instead of living on as an
orphan that nobody supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import BinaryIO

__all__ = ["OUTBOX_LINE", "READY_LINE", "WAKE_JOURNAL", "WAKE_OUTBOX", "WakeListener"]

log = logging.getLogger(__name__)

WAKE_JOURNAL = b"j"
WAKE_OUTBOX = b"o"
#: What the processing process prints on stdout once its loop runs.
READY_LINE = b"READY\n"
#: The line the processing process prints on stdout when it queued outgoing mail.
OUTBOX_LINE = WAKE_OUTBOX + b"\n"


class WakeListener:
    """A :class:`~gateway.daemon.Runnable` of the processing process: reads hints.

    ``handlers`` maps a hint byte to the callback it triggers (the workers'
    ``notify``).  Unknown bytes are ignored, so an older intake process talking to a
    newer processing process cannot break it.
    """

    name = "wakeup"

    def __init__(
        self,
        handlers: Mapping[bytes, Callable[[], None]],
        *,
        stdin: BinaryIO | None = None,
        stdout: BinaryIO | None = None,
    ) -> None:
        self._handlers = dict(handlers)
        self._stdin = stdin if stdin is not None else sys.stdin.buffer
        self._stdout = stdout if stdout is not None else sys.stdout.buffer
        self._out_fd: int | None = None
        self.ready = asyncio.Event()

    def add(self, hint: bytes, handler: Callable[[], None]) -> None:
        """Call ``handler`` when ``hint`` arrives (for workers built after this)."""
        self._handlers[hint] = handler

    def wake_outbox(self) -> None:
        """Tell the intake process that mail was queued (processing -> intake).

        Never blocks and never raises: the write is non-blocking, so a parent that does
        not read (busy, or gone) costs this hint, and the outbox finds the mail when it
        polls.  Nothing is written before ``READY``, which the parent must see first.
        """
        fd = self._out_fd
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(fd, OUTBOX_LINE)

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._stdin
        )
        try:
            self._stdout.write(READY_LINE)
            self._stdout.flush()
            with contextlib.suppress(OSError, ValueError, AttributeError):
                fd = self._stdout.fileno()
                os.set_blocking(fd, False)  # hints must never stall the event loop
                self._out_fd = fd
            self.ready.set()
            stop = asyncio.ensure_future(stopping.wait())
            try:
                while not stopping.is_set():
                    read = asyncio.ensure_future(reader.read(4096))
                    await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not read.done():
                        read.cancel()
                        break
                    chunk = read.result()
                    if not chunk:
                        log.warning("the intake process went away (stdin closed); stopping")
                        stopping.set()
                        break
                    for hint, handler in self._handlers.items():
                        if hint in chunk:
                            handler()
            finally:
                stop.cancel()
        finally:
            transport.close()
