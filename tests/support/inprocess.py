"""Run the real daemon inside the test's event loop, configured from a TOML file.

For tests that need the whole gateway (config -> app -> runnables) but want to await
its effects directly; the subprocess variant for end-to-end tests is tests/e2e.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.app import App, build_app, prepare_database
from gateway.config import load_config
from gateway.daemon import run_daemon


@asynccontextmanager
async def running_gateway(config: Path, ready_timeout: float = 10.0) -> AsyncIterator[App]:
    """Start every runnable the configuration enables; stop, drain and close on exit."""
    settings = load_config(config, {})
    prepare_database(settings)
    app = build_app(settings)
    stopping = asyncio.Event()
    daemon = asyncio.create_task(
        run_daemon(app.runnables, drain_timeout=10, stopping=stopping, handle_signals=False)
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while not all(getattr(r, "ready", asyncio.Event()).is_set() for r in app.runnables):
            if daemon.done() or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        yield app
    finally:
        stopping.set()
        await asyncio.wait_for(daemon, timeout=20)
        await app.close()
