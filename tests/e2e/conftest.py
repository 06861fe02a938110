"""Fixtures for end-to-end tests: gateways as real subprocesses, relays on real ports.

``gateway_factory`` starts ``imip-gateway serve`` subprocesses (each in its own temp
directory with its own SQLite file and free ports) and stops them after the test with
SIGTERM; a daemon that does not then exit 0 fails the test (every e2e test thus also
checks a clean drain).  When a test fails, the tail of every daemon log is printed
(pytest shows it in the "Captured stdout teardown" section), which is usually where
the reason is.  ``relay_factory`` makes :class:`~tests.e2e.support.Relay` servers and
stops them afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    CliResult,
    Daemon,
    Relay,
    StateReader,
    User,
    call_json,
    cli,
    cli_json,
    free_port,
    write_config,
)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Remember each phase's report on the item, so fixtures can tell whether the test
    # failed (the documented pytest recipe).
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    setup = getattr(request.node, "report_setup", None)
    return bool((report is not None and report.failed) or (setup is not None and setup.failed))


@dataclass
class Gateway:
    """One configured gateway: its config file, daemon, ports and a state reader."""

    name: str
    config: Path
    daemon: Daemon
    smtp_port: int | None
    lmtp_port: int | None
    reader: StateReader

    def cli(self, *args: str, expect: int | None = 0, stdin: bytes | None = None) -> CliResult:
        return cli(self.config, *args, expect=expect, stdin=stdin)

    def cli_json(self, *args: str, expect: int | None = 0) -> Any:
        """A CLI command with ``--json`` as a subprocess (the console script)."""
        return cli_json(self.config, *args, expect=expect)

    def call(self, *args: str, expect: int | None = 0) -> Any:
        """A CLI command with ``--json`` in this process (see ``support.call_json``)."""
        return call_json(self.config, *args, expect=expect)


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayFactory]:
    made: list[Gateway] = []

    def make(
        name: str,
        users: Sequence[User],
        *,
        relay_port: int,
        smtp: bool = True,
        lmtp: bool = False,
        gateway: Mapping[str, Any] | None = None,
        relay: Mapping[str, Any] | None = None,
        smtp_listener: Mapping[str, Any] | None = None,
        database_url: str | None = None,
        start: bool = True,
    ) -> Gateway:
        smtp_port = free_port() if smtp else None
        lmtp_port = free_port() if lmtp else None
        directory = tmp_path / name
        config = write_config(
            directory,
            hostname=f"{name}.gw.test",
            users=users,
            relay_port=relay_port,
            smtp_port=smtp_port,
            lmtp_port=lmtp_port,
            gateway=gateway,
            relay=relay,
            smtp_listener=smtp_listener,
            database_url=database_url,
        )
        # The reader's engine connects lazily: it first touches the file after the
        # daemon created the schema.
        gw = Gateway(name, config, Daemon(config, name), smtp_port, lmtp_port, StateReader(config))
        made.append(gw)
        if start:
            gw.daemon.start()
        return gw

    yield make

    failed = _failed(request)
    unclean: list[str] = []
    for gw in made:
        if gw.daemon.running:
            # Every test also proves a clean shutdown: SIGTERM drains and exits 0.
            code = gw.daemon.terminate()
            if code != 0:
                unclean.append(f"{gw.name}: serve exited {code} after SIGTERM")
        gw.reader.close()
    if failed or unclean:
        for gw in made:
            print(f"\n===== tail of {gw.daemon.log_path} =====\n{gw.daemon.tail(80)}")
    if unclean:
        pytest.fail("; ".join(unclean), pytrace=False)


@pytest.fixture
def relay_factory() -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(port: int | None = None, routes: Mapping[str, int] | None = None) -> Relay:
        relay = Relay(port or free_port(), routes)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.stop()
