"""Wake-ups from the intake process to the processing process, over the child's stdin.

With ``gateway.processing_process`` the daemon is two processes (see
:mod:`gateway.workers.child`): intake journals a message and the processing process
must learn of it without polling the database.  The journal is the durable queue
between them; this pipe only carries *hints*, one byte each:

* ``j``: a message was journaled: process the journal now;
* ``o``: intake queued mail itself (a content filter's hand-back): run the outbox.

A lost or coalesced hint costs latency, never a message: both workers still poll.
End of file on stdin means the intake process is gone (exited, or killed with
SIGKILL): the processing process then drains and exits instead of living on as an
orphan that nobody supervises.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from typing import BinaryIO

__all__ = ["READY_LINE", "WAKE_JOURNAL", "WAKE_OUTBOX", "WakeListener"]

log = logging.getLogger(__name__)

WAKE_JOURNAL = b"j"
WAKE_OUTBOX = b"o"
#: What the processing process prints on stdout once its loop runs.
READY_LINE = b"READY\n"


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
        self.ready = asyncio.Event()

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self._stdin
        )
        try:
            self._stdout.write(READY_LINE)
            self._stdout.flush()
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
