"""Start the real gateway the way an operator does: a TOML file and ``imip-gateway serve``.

:class:`GatewayConfig` writes a config for one benchmark session (SQLite file in a temp
dir, or a PostgreSQL URL), with two local users: ``bob@bench.example`` (policy accept:
answers invitations automatically) and ``alice@bench.example`` (manual: the organiser
whose stored events receive replies), the SMTP listener on a free loopback port and the
relay pointing at the bench sink.

:class:`RunningDaemon` runs ``imip-gateway --config FILE serve`` as a subprocess, waits
until the SMTP port greets (``220``), measures its CPU and RSS from /proc (process tree:
children included), and stops it with SIGTERM, checking the documented exit status 0.

:func:`bench_postgres` starts a throwaway PostgreSQL server like the test suite does
(``tests/support/postgres.py`` is reused), but *durable*: fsync and synchronous_commit
stay on, since commit cost is part of what is measured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.messages import ORGANISER, RESPONDER
from bench.procstat import RssSampler, cpu_seconds, rss_kb

__all__ = [
    "DaemonError",
    "GatewayConfig",
    "RunningDaemon",
    "bench_postgres",
    "free_port",
    "gateway_command",
]


class DaemonError(RuntimeError):
    """The daemon did not start, did not answer, or did not stop cleanly."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m gateway``."""
    script = Path(sys.executable).parent / "imip-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway"]


@dataclass
class GatewayConfig:
    """One benchmark session's configuration file and database."""

    workdir: Path
    relay_port: int
    database_url: str = ""
    smtp_port: int = field(default_factory=free_port)
    log_level: str = "WARNING"
    # gateway.processing_process: processing in a second process (the default) or not.
    processing_process: bool = True

    def __post_init__(self) -> None:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.workdir / 'gateway.sqlite3'}"
        self.path = self.workdir / "gateway.toml"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def write(self) -> Path:
        self.path.write_text(
            f"""# imip-gateway benchmark session (written by bench/daemon.py)
[gateway]
hostname = "gw.bench.example"
state_dir = "{self.workdir / "var"}"
# The bench sends thousands of invitations from a pool of ~1000 organisers; the
# mail-loop guard (RFC 3834) would otherwise throttle the automatic answers.
auto_reply_limit_per_hour = 100000000
shutdown_timeout_seconds = 30
processing_process = {"true" if self.processing_process else "false"}

[database]
url = "{self.database_url}"
auto_upgrade = true
pool_size = 5

[listeners.smtp]
enabled = true
host = "127.0.0.1"
port = {self.smtp_port}

[listeners.lmtp]
enabled = false

[relay]
host = "127.0.0.1"
port = {self.relay_port}
tls = "none"
max_connections = 2
retry_initial_seconds = 1
retry_max_seconds = 5

[[users]]
address = "{RESPONDER}"
display_name = "Bob Bench"
policy = "accept"

[[users]]
address = "{ORGANISER}"
display_name = "Alice Bench"
policy = "manual"
party_crashers = "hold"

[logging]
level = "{self.log_level}"
format = "human"
""",
            encoding="utf-8",
        )
        return self.path

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``imip-gateway --config FILE ARGS`` and return its result."""
        return subprocess.run(
            [*gateway_command(), "--config", str(self.path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            check=False,
        )


class RunningDaemon:
    """``imip-gateway --config FILE serve`` as a subprocess, with /proc measurements."""

    def __init__(self, config: GatewayConfig, *, ready_timeout: float = 30.0) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.log_path = config.workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: RssSampler | None = None
        self.exit_status: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> RunningDaemon:
        env = dict(os.environ)
        env.pop("IMIP_GATEWAY_CONFIG", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*gateway_command(), "--config", str(self.config.path), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.config.workdir,
                env=env,
            )
        self._wait_ready()
        self.sampler = RssSampler(self.pid).start()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise DaemonError(
                    f"imip-gateway serve exited with status {self.proc.returncode} before"
                    f" listening on 127.0.0.1:{self.config.smtp_port}; log:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.config.smtp_port), timeout=1) as sock,
            ):
                sock.settimeout(5)
                greeting = sock.recv(512)
                if greeting.startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
            time.sleep(0.1)
        self.kill()
        raise DaemonError(
            f"imip-gateway serve did not open its SMTP listener on 127.0.0.1:"
            f"{self.config.smtp_port} within {self.ready_timeout:.0f}s: is the SMTP listener"
            " (SmtpListener) wired into gateway/app.py build_app()?  log:\n" + self.log_tail()
        )

    def cpu(self) -> float:
        """CPU seconds used so far by the daemon (and any children)."""
        return cpu_seconds(self.pid)

    def rss_kb(self) -> tuple[int, int]:
        return rss_kb(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the drain, return the exit status (0 expected)."""
        if self.proc is None:
            return 0
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.exit_status = self.proc.returncode
        return self.exit_status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def bench_postgres() -> Iterator[str]:
    """A durable throwaway PostgreSQL server on loopback; yields an empty database URL."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.postgres import running_postgres  # binaries, runuser, clean-up

    settings = {"max_connections": "50", "shared_buffers": "128MB"}
    with running_postgres(durable=True, settings=settings) as server:
        yield server.url()
