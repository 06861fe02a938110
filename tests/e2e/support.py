"""Helpers for end-to-end tests: the real daemon as a subprocess, real SMTP on loopback.

* :func:`free_port` - a TCP port nobody listens on (bind to 0, read it, close);
* :func:`write_config` / :class:`User` - a gateway TOML file in a temp directory
  (SQLite file there by default, or any database URL);
* :class:`Daemon` - ``imip-gateway --config CFG serve`` as a subprocess, stdout/stderr
  in a log file (appended across restarts), readiness by the log line
  ``imip-gateway ready``, SIGTERM/SIGKILL, the log tail for failure reports;
* :func:`cli` / :func:`cli_json` - the command line as a subprocess (``--json`` parsed);
  :func:`call_json` - the same CLI ``main`` in this process (no 1.7 s start-up);
* :class:`StateReader` - the CLI's own read models (``gateway.services.queries``) run
  in the test process on the daemon's database, for cheap *polling*; tests *assert*
  through the CLI;
* :class:`Relay` - an aiosmtpd server in a background thread on a fixed port: records
  every transaction, replies as scripted (``451`` then ``250``, ``550`` per recipient),
  and optionally routes each recipient to another SMTP server by domain (a tiny MX);
* :class:`Burst` - many messages over several SMTP connections from threads, recording
  which got their 250; :func:`smtp_send`, :func:`lmtp_transaction` - one transaction;
* :func:`wait_until` - poll a predicate with a generous timeout (never a timing assertion).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AiosmtpdSMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session as SmtpSession

__all__ = [
    "Burst",
    "CliError",
    "Daemon",
    "Relay",
    "RelayedMessage",
    "StateReader",
    "User",
    "calendar_of",
    "call_json",
    "cli",
    "cli_json",
    "free_port",
    "future",
    "ical_time",
    "lmtp_transaction",
    "now_stamp",
    "smtp_send",
    "unfolded",
    "wait_until",
    "write_config",
]

T = TypeVar("T")

#: The console script installed next to the interpreter running the tests (.venv or
#: the CI virtualenv).
EXE = Path(sys.executable).with_name("imip-gateway")

READY_LINE = "imip-gateway ready"


# ------------------------------------------------------------------------ small things


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], what: str, timeout: float = 60.0, interval: float = 0.25
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Timeouts are generous on purpose: the machine may be slow, and a test asserts
    *what* happens, never how fast.
    """
    deadline = time.monotonic() + timeout
    last: T = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")
        time.sleep(interval)
        last = predicate()
    return last


def ical_time(when: datetime) -> str:
    """An iCalendar UTC DATE-TIME (``20261201T100000Z``)."""
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def now_stamp() -> str:
    """DTSTAMP for a message written now."""
    return ical_time(datetime.now(UTC).replace(microsecond=0))


def future(days: int, hour: int = 10) -> datetime:
    """A whole hour ``days`` from today (inside any room's booking window)."""
    today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return today.replace(hour=hour) + timedelta(days=days)


def calendar_of(raw: bytes) -> tuple[str, str]:
    """(METHOD, the text/calendar body) of an iMIP message."""
    msg = message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_type() == "text/calendar":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            text = payload.decode(part.get_content_charset() or "utf-8")
            method = ""
            for line in text.splitlines():
                if line.upper().startswith("METHOD:"):
                    method = line.split(":", 1)[1].strip().upper()
                    break
            return method, text
    return "", ""


def unfolded(text: str) -> list[str]:
    """Content lines of an iCalendar text with folding undone (RFC 5545 section 3.1)."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] += line[1:]
        elif line:
            out.append(line)
    return out


# ------------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class User:
    """One ``[[users]]`` table."""

    address: str
    policy: str = "manual"
    kind: str = "person"
    booking: Mapping[str, Any] = field(default_factory=dict)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _table(name: str, values: Mapping[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]


def write_config(
    directory: Path,
    *,
    hostname: str,
    users: Sequence[User],
    relay_port: int,
    smtp_port: int | None = None,
    lmtp_port: int | None = None,
    gateway: Mapping[str, Any] | None = None,
    relay: Mapping[str, Any] | None = None,
    smtp_listener: Mapping[str, Any] | None = None,
    database_url: str | None = None,
    name: str = "gateway.toml",
) -> Path:
    """Write a complete gateway configuration (SQLite file in ``directory`` by default)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    lines += _table(
        "gateway",
        {"hostname": hostname, "state_dir": str(directory / "var"), **(gateway or {})},
    )
    lines += _table("database", {"url": database_url or sqlite_url_in(directory)})
    lines += _table(
        "listeners.smtp",
        {
            "enabled": smtp_port is not None,
            "host": "127.0.0.1",
            "port": smtp_port or 0,
            **(smtp_listener or {}),
        },
    )
    lines += _table(
        "listeners.lmtp",
        {"enabled": lmtp_port is not None, "host": "127.0.0.1", "port": lmtp_port or 0},
    )
    lines += _table(
        "relay",
        {
            "host": "127.0.0.1",
            "port": relay_port,
            "timeout_seconds": 10,
            "from_address": f"imip-gateway@{hostname}",
            **(relay or {}),
        },
    )
    for user in users:
        lines += [
            "[[users]]",
            f"address = {_toml(user.address)}",
            f"kind = {_toml(user.kind)}",
            f"policy = {_toml(user.policy)}",
            "",
        ]
        if user.booking:
            lines += _table("users.booking", user.booking)
    lines += _table("logging", {"level": "INFO", "format": "human"})
    path = directory / name
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def sqlite_url_in(directory: Path) -> str:
    return f"sqlite:///{directory / 'gateway.sqlite3'}"


def database_url_of(config: Path) -> str:
    """The ``[database] url`` a config file written by :func:`write_config` names."""
    import tomllib

    return str(tomllib.loads(config.read_text("utf-8"))["database"]["url"])


# ------------------------------------------------------------------------ processes


def _clean_env() -> dict[str, str]:
    # A developer's IMIP_GATEWAY_* variables would override the test's file.
    return {k: v for k, v in os.environ.items() if not k.startswith("IMIP_GATEWAY_")}


class CliError(AssertionError):
    """The command line exited with an unexpected status."""


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli(config: Path, *args: str, expect: int | None = 0, stdin: bytes | None = None) -> CliResult:
    """Run ``imip-gateway --config CONFIG ARGS...`` as a subprocess."""
    proc = subprocess.run(
        [str(EXE), "--config", str(config), *args],
        input=stdin,
        capture_output=True,
        cwd=config.parent,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    result = CliResult(
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )
    if expect is not None and result.code != expect:
        raise CliError(
            f"imip-gateway {' '.join(args)} exited {result.code} (expected {expect})\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def cli_json(config: Path, *args: str, expect: int | None = 0) -> Any:
    """Run a CLI command with ``--json`` and parse what it printed."""
    result = cli(config, *args, "--json", expect=expect)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"imip-gateway {' '.join(args)} --json printed no JSON: {exc}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        ) from exc


def call_json(config: Path, *args: str, expect: int | None = 0) -> Any:
    """A CLI command with ``--json``, run by the CLI's ``main`` in this process.

    The same parser, configuration loading, handler and JSON printer as the console
    script, without the ~1.7 s of interpreter start and imports per call (the tests
    assert a lot of state).  The process boundary itself (console script, exit status,
    clean stdout) is covered by :func:`cli_json`, which every test file also uses.
    """
    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--config", str(config), *args, "--json"], environ=_clean_env())
    finally:
        # main() configures logging for a command-line process; give pytest its own back.
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
    if expect is not None and code != expect:
        raise CliError(
            f"imip-gateway {' '.join(args)} --json returned {code} (expected {expect})\n"
            f"--- stdout\n{out.getvalue()}\n--- stderr\n{err.getvalue()}"
        )
    return json.loads(out.getvalue())


def processing_children(pid: int) -> list[int]:
    """Live children of ``pid`` running ``serve --role processing``
    (``gateway.processing_process``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().split(b"\0")
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid and b"--role" in cmdline:
            out.append(int(entry))
    return out


class Daemon:
    """``imip-gateway --config CONFIG serve`` as a subprocess (restartable)."""

    def __init__(self, config: Path, name: str) -> None:
        self.config = config
        self.name = name
        self.log_path = config.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self._log_offset = 0

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> Daemon:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"----- {self.name}: starting serve -----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [str(EXE), "--config", str(self.config), "serve"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.config.parent,
                env=_clean_env(),
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def log_since_start(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.proc.returncode} before it was ready:\n"
                    + self.tail()
                )
            return READY_LINE in self.log_since_start()

        wait_until(ready, f"{self.name} to log {READY_LINE!r}", timeout, interval=0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit status (the drain may take a moment)."""
        return self._stop(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: no drain, no cleanup, like a power loss for this process.

        Only ``serve`` itself: its processing process notices and drains on its own.
        """
        return self._stop(signal.SIGKILL, 30.0)

    def kill_all(self) -> int:
        """SIGKILL ``serve`` and its processing process together (a power loss)."""
        for child in processing_children(self.pid):
            os.kill(child, signal.SIGKILL)
        return self.kill()

    def _stop(self, signum: signal.Signals, timeout: float) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(30)
            raise AssertionError(
                f"{self.name} did not exit within {timeout:g}s of {signum.name}:\n" + self.tail()
            ) from None
        self.exit_codes.append(code)
        return code

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return f"({self.log_path} does not exist)"
        text = self.log_path.read_text("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])


# ------------------------------------------------------------------------ state (polling)


class StateReader:
    """The CLI's read models, run in the test process on a daemon's SQLite file.

    Only reads (every transaction is rolled back); used to *wait* cheaply.  The state a
    test asserts is read again through the real CLI.
    """

    def __init__(self, config: Path) -> None:
        from gateway.store.facade import Store

        self.config = config
        self.store = Store(database_url_of(config))

    def close(self) -> None:
        self.store.close()

    def messages(self) -> list[dict[str, Any]]:
        from gateway.services import queries

        return self.store.read_sync(queries.message_list, 100_000)

    def message(self, journal_id: int) -> dict[str, Any] | None:
        from gateway.services import queries

        return self.store.read_sync(queries.message_detail, journal_id)

    def outbox(self) -> list[dict[str, Any]]:
        from gateway.services import queries

        return self.store.read_sync(queries.outbox_list, None, 100_000)

    def events(self, uid: str, owner: str | None = None) -> list[dict[str, Any]]:
        from gateway.services import queries

        return self.store.read_sync(queries.event_detail, uid, owner)

    def all_processed(self, at_least: int = 1) -> bool:
        rows = self.messages()
        return len(rows) >= at_least and all(r["status"] in ("done", "quarantined") for r in rows)


# ------------------------------------------------------------------------ SMTP


def smtp_send(
    port: int,
    data: bytes,
    *,
    mail_from: str,
    rcpt_tos: Iterable[str],
    lmtp: bool = False,
    timeout: float = 30.0,
) -> dict[str, tuple[int, bytes]]:
    """One SMTP (or LMTP) transaction; returns the refused recipients like smtplib."""
    client: smtplib.SMTP
    if lmtp:
        client = smtplib.LMTP("127.0.0.1", port, timeout=timeout)
    else:
        client = smtplib.SMTP("127.0.0.1", port, timeout=timeout)
    with client:
        refused = client.sendmail(mail_from, list(rcpt_tos), data)
    return dict(refused)


def without_headers(data: bytes, names: Sequence[str]) -> bytes:
    """``data`` without the header fields ``names`` (and their continuation lines)."""
    if not names:
        return data
    head, sep, body = data.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        dropping = name in names
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


@dataclass(frozen=True)
class RelayedMessage:
    """One DATA the relay answered, with its reply and where it was routed."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    reply: str
    routed_to: int | None = None  # the port it was forwarded to (router mode)

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")

    @property
    def headers(self) -> Message:
        return message_from_bytes(self.data)

    @property
    def method(self) -> str:
        return calendar_of(self.data)[0]

    @property
    def calendar(self) -> str:
        return calendar_of(self.data)[1]


class _RelayHandler:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def handle_RCPT(
        self,
        server: AiosmtpdSMTP,
        session: SmtpSession,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.relay._rcpt_reply(address)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(
        self, server: AiosmtpdSMTP, session: SmtpSession, envelope: SmtpEnvelope
    ) -> str:
        data = bytes(envelope.original_content or b"")
        mail_from = envelope.mail_from or ""
        rcpts = tuple(envelope.rcpt_tos)
        reply, port = await self.relay._data_reply(mail_from, rcpts, data)
        self.relay._record(RelayedMessage(mail_from, rcpts, data, reply, port))
        return reply


class Relay:
    """An SMTP server on a fixed loopback port, in a background thread.

    Plain sink by default (every DATA 250).  ``script_data("451 ...", ...)`` answers the
    next DATAs with those replies; ``refuse_rcpt[address] = "550 ..."`` refuses one
    recipient at RCPT.  With ``routes={"example.org": port_a, ...}`` it acts as the MX of
    those domains: each DATA is forwarded per domain (aiosmtplib) to that port, and the
    client gets 250 only when every forward succeeded (else the forward's 4xx/5xx, so
    the sending gateway keeps the message and retries).  Recipients in other domains
    are refused at RCPT in router mode.
    """

    def __init__(
        self,
        port: int,
        routes: Mapping[str, int] | None = None,
        strip_headers: Iterable[str] = (),
    ) -> None:
        self.port = port
        self.routes = dict(routes or {})
        # Header fields removed from the forwarded copy (router mode), e.g. to work
        # around a product bug in one test while another test keeps showing it.
        self.strip_headers = tuple(h.lower() for h in strip_headers)
        self.refuse_rcpt: dict[str, str] = {}
        self.seen: list[RelayedMessage] = []
        self._script: deque[str] = deque()
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    # -- scripting ---------------------------------------------------------------------

    def script_data(self, *replies: str) -> None:
        with self._lock:
            self._script.extend(replies)

    def _rcpt_reply(self, address: str) -> str:
        if address.lower() in self.refuse_rcpt:
            return self.refuse_rcpt[address.lower()]
        if self.routes and address.rpartition("@")[2].lower() not in self.routes:
            return f"550 5.1.2 <{address}>: no route to this domain"
        return "250 2.1.5 Ok"

    async def _data_reply(
        self, mail_from: str, rcpts: tuple[str, ...], data: bytes
    ) -> tuple[str, int | None]:
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            return scripted, None
        if not self.routes:
            return "250 2.0.0 Ok: stored by relay", None
        by_domain: dict[str, list[str]] = {}
        for rcpt in rcpts:
            by_domain.setdefault(rcpt.rpartition("@")[2].lower(), []).append(rcpt)
        port: int | None = None
        for domain, group in by_domain.items():
            port = self.routes[domain]
            try:
                errors, _ = await aiosmtplib.send(
                    without_headers(data, self.strip_headers),
                    sender=mail_from,
                    recipients=group,
                    hostname="127.0.0.1",
                    port=port,
                    timeout=30,
                )
            except aiosmtplib.SMTPResponseException as exc:
                return f"{exc.code} {exc.message}", port
            except (OSError, aiosmtplib.SMTPException) as exc:
                return f"451 4.4.1 forward to {domain} failed: {exc}", port
            if errors:
                first = next(iter(errors.values()))
                return f"{first.code} {first.message}", port
        return "250 2.0.0 Ok: forwarded", port

    def _record(self, message: RelayedMessage) -> None:
        with self._lock:
            self.seen.append(message)

    # -- views -------------------------------------------------------------------------

    @property
    def accepted(self) -> list[RelayedMessage]:
        with self._lock:
            return [m for m in self.seen if m.accepted]

    def delivered(
        self, *, to: str | None = None, method: str | None = None, sender: str | None = None
    ) -> list[RelayedMessage]:
        """Accepted messages, filtered by recipient, iTIP method and From address."""
        out = []
        for m in self.accepted:
            if to is not None and to.lower() not in (r.lower() for r in m.rcpt_tos):
                continue
            if method is not None and m.method != method:
                continue
            if sender is not None and sender.lower() not in str(m.headers["From"]).lower():
                continue
            out.append(m)
        return out

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Relay:
        self._controller = Controller(
            _RelayHandler(self),
            hostname="127.0.0.1",
            port=self.port,
            server_hostname="relay.test",
            ready_timeout=10,
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------ bursts


class Burst:
    """Send many messages over several SMTP connections at once, from threads.

    Each worker thread keeps one connection and sends its share one transaction at a
    time; when the connection dies (the daemon was killed or is shutting down) the
    message counts as not accepted and the thread reconnects for the next one (which
    fails fast while nothing listens).  ``accepted`` holds the Message-IDs that got
    their final 250: exactly the messages the gateway promised not to lose.
    """

    def __init__(
        self,
        port: int,
        mails: Sequence[tuple[str, str, Sequence[str], bytes]],
        connections: int = 4,
        pause: float = 0.0,
    ) -> None:
        self.port = port
        self.mails = list(mails)  # (message_id, mail_from, rcpt_tos, data)
        self.connections = connections
        # Seconds each connection waits between its messages: keeps a burst going long
        # enough for the test to interrupt it in the middle, on a fast machine too.
        self.pause = pause
        self.accepted: list[str] = []
        self.not_accepted: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> Burst:
        for n in range(self.connections):
            share = self.mails[n :: self.connections]
            thread = threading.Thread(target=self._run, args=(share,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout: float = 120.0) -> Burst:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "a burst thread is stuck"
        return self

    @property
    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)

    def _run(self, share: Sequence[tuple[str, str, Sequence[str], bytes]]) -> None:
        client: smtplib.SMTP | None = None
        for message_id, mail_from, rcpts, data in share:
            if self.pause:
                time.sleep(self.pause)
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                refused = client.sendmail(mail_from, list(rcpts), data)
            except (OSError, smtplib.SMTPException) as exc:
                with self._lock:
                    self.not_accepted.append((message_id, f"{type(exc).__name__}: {exc}"))
                if client is not None:
                    with contextlib.suppress(OSError, smtplib.SMTPException):
                        client.close()
                client = None
                continue
            with self._lock:
                if refused:
                    self.not_accepted.append((message_id, f"refused: {refused!r}"))
                else:
                    self.accepted.append(message_id)
        if client is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                client.quit()


def lmtp_transaction(
    port: int, mail_from: str, rcpt_tos: Sequence[str], data: bytes, timeout: float = 30.0
) -> tuple[list[str], list[str]]:
    """One LMTP transaction on a raw socket: (RCPT replies, per-recipient DATA replies).

    smtplib reads one reply after the final dot; LMTP sends one per accepted recipient
    (RFC 2033 section 4.2), so this client reads them itself.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = sock.makefile("rwb")

        def reply() -> str:
            lines: list[str] = []
            while True:
                line = stream.readline().decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    raise ConnectionError(f"connection closed after {lines!r}")
                lines.append(line)
                if len(line) < 4 or line[3] != "-":
                    return "\n".join(lines)

        def command(line: str) -> str:
            stream.write(line.encode() + b"\r\n")
            stream.flush()
            return reply()

        reply()  # greeting
        command("LHLO client.test")
        assert command(f"MAIL FROM:<{mail_from}>").startswith("250")
        rcpt_replies = [command(f"RCPT TO:<{r}>") for r in rcpt_tos]
        assert command("DATA").startswith("354")
        body = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        stuffed = b"\r\n".join(
            b"." + line if line.startswith(b".") else line for line in body.split(b"\r\n")
        )
        stream.write(stuffed + b".\r\n")
        stream.flush()
        accepted = sum(1 for r in rcpt_replies if r.startswith("2"))
        data_replies = [reply() for _ in range(accepted)]
        command("QUIT")
    return rcpt_replies, data_replies
