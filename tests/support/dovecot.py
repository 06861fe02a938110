"""A throwaway Dovecot IMAP server for the test suite.

Debian's ``dovecot-imapd`` (Dovecot 2.3) run unprivileged in a temporary directory on
127.0.0.1 and a free port (ARCHITECTURE.md section 9): its own base_dir, state_dir and
log file, Maildir storage, a passwd-file passdb with ``{PLAIN}`` passwords and a static
userdb.  The master process runs as an unprivileged user: the current user, or -- when
the tests run as root, as in CI -- a system user created once for the purpose
(:data:`SERVICE_USER`), so no mail process ever runs as root.

Optionally it speaks TLS (a self-signed certificate made with ``openssl``) on an
implicit-TLS port next to the plain one, where STARTTLS is offered as well.

Messages are injected with ``doveadm save`` (the same code path as LMTP delivery) and
inspected with ``doveadm fetch``/``doveadm search``, never through the client under
test.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SERVICE_USER",
    "DovecotServer",
    "DovecotUnavailable",
    "find_dovecot",
    "running_dovecot",
]

SERVICE_USER = "imipgw-dovecot"
_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0


class DovecotUnavailable(RuntimeError):
    """Dovecot cannot be run on this machine (binaries or user missing)."""


def find_dovecot() -> tuple[Path, Path]:
    """Paths of the ``dovecot`` and ``doveadm`` binaries."""
    dovecot = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    doveadm = shutil.which("doveadm") or (
        "/usr/bin/doveadm" if Path("/usr/bin/doveadm").exists() else None
    )
    if dovecot is None or doveadm is None:
        raise DovecotUnavailable(
            "dovecot/doveadm not found; install them with `apt-get install dovecot-imapd`"
        )
    # dovecot-core alone has no imap binary: the server would start and refuse logins.
    libexec = Path("/usr/lib/dovecot")
    if libexec.is_dir() and not (libexec / "imap").exists():
        raise DovecotUnavailable(
            "dovecot-core is installed but not the IMAP server: apt-get install dovecot-imapd"
        )
    return Path(dovecot), Path(doveadm)


def _has_lmtp() -> bool:
    return Path("/usr/lib/dovecot/lmtp").exists()


def _free_ports(count: int) -> list[int]:
    """``count`` distinct ports free right now (another process may still take one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _service_account() -> pwd.struct_passwd:
    """The unprivileged account Dovecot runs as (created once when we are root)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if useradd is None:
        raise DovecotUnavailable("running as root and useradd(8) is missing")
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            SERVICE_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # Status 9: created meanwhile by a concurrent test process -- fine, it exists now.
    if result.returncode not in (0, 9):
        raise DovecotUnavailable(f"useradd {SERVICE_USER} failed: {result.stderr.strip()}")
    return pwd.getpwnam(SERVICE_USER)


def _make_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DovecotUnavailable("openssl(1) is needed to make the test TLS certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return cert, key


@dataclass
class DovecotServer:
    """One Dovecot instance in ``base``; start/stop/restart keep the same mail store."""

    base: Path
    dovecot_bin: Path
    doveadm_bin: Path
    account: pwd.struct_passwd
    port: int
    tls_port: int | None = None
    cert_file: Path | None = None
    users: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    # Replaces the post-login CAPABILITY list (to imitate servers without IDLE or MOVE).
    imap_capability: str | None = None
    # LMTP listener (RFC 2033) when dovecot-lmtpd is installed, else None.
    lmtp_port: int | None = None
    _process: subprocess.Popen[bytes] | None = None

    # -- paths -----------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    def maildir(self, user: str, mailbox: str = "INBOX") -> Path:
        """The Maildir++ folder of ``mailbox`` (INBOX is the root)."""
        root = self.base / "mail" / user
        return root if mailbox.upper() == "INBOX" else root / f".{mailbox}"

    # -- configuration ---------------------------------------------------------------------

    def _as_service_user(self) -> dict[str, Any]:
        """``subprocess`` arguments that drop root for the child (no wrapper process).

        Not runuser(1): on SIGTERM it waits two seconds and then SIGKILLs the master,
        which would leave a stale pid file behind.
        """
        if os.geteuid() != 0:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def write_config(self) -> None:
        user = self.account.pw_name
        group = grp.getgrgid(self.account.pw_gid).gr_name
        passwd = self.base / "passwd"
        passwd.write_text(
            "".join(f"{name}:{{PLAIN}}{password}::::::\n" for name, password in self.users.items())
        )
        if self.tls_port is not None and self.cert_file is not None:
            ssl = f"ssl = yes\nssl_cert = <{self.cert_file}\nssl_key = <{self.base / 'key.pem'}\n"
            imaps = (
                f"  inet_listener imaps {{\n    address = {self.host}\n"
                f"    port = {self.tls_port}\n    ssl = yes\n  }}\n"
            )
        else:
            ssl = "ssl = no\n"
            imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        capability = f"imap_capability = {self.imap_capability}\n" if self.imap_capability else ""
        protocols = "imap lmtp" if self.lmtp_port is not None else "imap"
        lmtp = (
            (
                "service lmtp {\n  inet_listener lmtp {\n"
                f"    address = {self.host}\n    port = {self.lmtp_port}\n  }}\n}}\n"
            )
            if self.lmtp_port is not None
            else ""
        )
        # `chroot =` must be written as a multi-line block (section 9): a one-line
        # `service anvil { chroot = }` is a syntax error in Dovecot 2.3.
        self.config_path.write_text(
            f"""\
base_dir = {self.base / "run"}
state_dir = {self.base / "state"}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
protocols = {protocols}
postmaster_address = postmaster@example.org
listen = {self.host}
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests provoke failed logins on purpose; do not make them wait (default 2 s).
auth_failure_delay = 0
mail_location = maildir:{self.base / "mail"}/%u
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 0
mail_fsync = never
{capability}shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={self.account.pw_uid} gid={self.account.pw_gid} home={self.base / "home"}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
{imaps}  chroot =
}}
service anvil {{
  chroot =
}}
{lmtp}service stats {{
  unix_listener stats-reader {{
    user = {user}
  }}
  unix_listener stats-writer {{
    user = {user}
  }}
}}
"""
        )
        for sub in ("run", "state", "mail", "home"):
            (self.base / sub).mkdir(exist_ok=True)
        if os.geteuid() == 0:
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, self.account.pw_uid, self.account.pw_gid)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the master in the foreground of a child process; wait for the port."""
        if self._process is not None and self._process.poll() is None:
            return
        with (self.base / "master.err").open("ab") as errors:
            self._process = subprocess.Popen(
                [str(self.dovecot_bin), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                # A process group of its own: stop() signals the master, not pytest.
                start_new_session=True,
                **self._as_service_user(),
            )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"dovecot exited at start:\n{self.diagnostics()}")
            ports = [p for p in (self.port, self.tls_port, self.lmtp_port) if p is not None]
            if all(self._listening(p) for p in ports):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not start listening:\n{self.diagnostics()}")

    def _listening(self, port: int) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((self.host, port)) == 0

    def stop(self) -> None:
        """Stop the server and wait for the master to exit (section 9: about 3 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        # SIGTERM to the whole process group: the master removes its pid file and exits;
        # a client's imap process would otherwise outlive it and keep serving its
        # connection (what a "stopped server" must not do in these tests).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
        # Children (imap, anvil...) can outlive the master for a moment; a new master
        # on the same directories must not meet them.
        deadline = time.monotonic() + _STOP_TIMEOUT
        while time.monotonic() < deadline and (
            self._listening(self.port) or (self.base / "run" / "master.pid").exists()
        ):
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def diagnostics(self) -> str:
        parts = []
        for path in (self.base / "master.err", self.log_path):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    # -- mail store access (doveadm) -------------------------------------------------------

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        """Run ``doveadm -c CONFIG ARGS...`` as the service user; return stdout."""
        result: subprocess.CompletedProcess[bytes] = subprocess.run(
            [str(self.doveadm_bin), "-c", str(self.config_path), *args],
            input=stdin,
            capture_output=True,
            check=False,
            timeout=60,
            **self._as_service_user(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"doveadm {' '.join(args)} failed ({result.returncode}):"
                f" {result.stderr.decode(errors='replace')}"
            )
        return bytes(result.stdout).decode(errors="replace")

    def deliver(self, user: str, raw: bytes, mailbox: str = "INBOX") -> None:
        """Store ``raw`` in ``mailbox`` as a new message, byte for byte (``doveadm save``)."""
        self.doveadm("save", "-u", user, "-m", mailbox, stdin=raw)

    def deliver_lmtp(self, user: str, raw: bytes, mail_from: str) -> None:
        """Deliver ``raw`` to ``user``'s INBOX over LMTP, as an MTA would.

        Dovecot's LMTP adds ``Return-Path: <mail_from>`` and ``Delivered-To`` headers.
        """
        if self.lmtp_port is None:
            raise DovecotUnavailable("LMTP needs dovecot-lmtpd: apt-get install dovecot-lmtpd")
        with smtplib.LMTP(self.host, self.lmtp_port, timeout=30) as client:
            refused = client.sendmail(mail_from, [user], raw)
        if refused:
            raise RuntimeError(f"LMTP refused {user}: {refused}")

    def create_mailbox(self, user: str, mailbox: str) -> None:
        self.doveadm("mailbox", "create", "-u", user, mailbox)

    def uids(self, user: str, mailbox: str = "INBOX") -> list[int]:
        out = self.doveadm("search", "-u", user, "mailbox", mailbox, "ALL")
        # One line per message: "<mailbox-guid> <uid>".
        return sorted(int(line.split()[1]) for line in out.splitlines() if line.strip())

    def count(self, user: str, mailbox: str = "INBOX") -> int:
        """Number of messages in ``mailbox`` (0 when it does not exist)."""
        try:
            return len(self.uids(user, mailbox))
        except RuntimeError as exc:
            if "Mailbox doesn't exist" in str(exc) or "doesn't exist" in str(exc):
                return 0
            raise

    def list_flags(self, user: str, mailbox: str = "INBOX") -> dict[int, set[str]]:
        """``{uid: {flags}}`` of every message in ``mailbox``."""
        out = self.doveadm("-f", "tab", "fetch", "-u", user, "uid flags", "mailbox", mailbox, "ALL")
        flags: dict[int, set[str]] = {}
        for line in out.splitlines()[1:]:  # the first line is the header "uid\tflags"
            if not line.strip():
                continue
            uid, _, names = line.partition("\t")
            flags[int(uid)] = set(names.split())
        return flags

    def uidvalidity(self, user: str, mailbox: str = "INBOX") -> int:
        out = self.doveadm("mailbox", "status", "-u", user, "uidvalidity", mailbox)
        # "uidvalidity=1700000000"
        return int(out.strip().split("=", 1)[1])

    def change_uidvalidity(self, user: str, mailbox: str = "INBOX") -> int:
        """Give ``mailbox`` a new UIDVALIDITY (as if it had been recreated); return it.

        ``doveadm mailbox update --uid-validity`` keeps the messages, like a server
        that rebuilt its index: every UID the client remembered is meaningless now.
        """
        new = self.uidvalidity(user, mailbox) + 1000
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), mailbox)
        return new


@contextlib.contextmanager
def running_dovecot(
    users: dict[str, str] | None = None,
    *,
    tls: bool = False,
    imap_capability: str | None = None,
) -> Iterator[DovecotServer]:
    """Start a fresh Dovecot; stop it and delete its files on exit.

    ``imap_capability`` replaces the advertised post-login capabilities, e.g. to play a
    server without IDLE or MOVE (the commands keep working; a client just must not use
    what is not advertised).

    Raises :class:`DovecotUnavailable` when this machine cannot run one, and
    ``RuntimeError`` (with the server log) when it should but fails to start.
    """
    dovecot, doveadm = find_dovecot()
    account = _service_account()
    # Not under pytest's tmp_path: a 0700 directory of root that the service user cannot
    # traverse.
    base = Path(tempfile.mkdtemp(prefix="imip-gateway-dovecot-"))
    try:
        cert_file = _make_certificate(base)[0] if tls else None
        server = DovecotServer(
            base=base,
            dovecot_bin=dovecot,
            doveadm_bin=doveadm,
            account=account,
            port=0,
            cert_file=cert_file,
            users=dict(users or {"alice": "secret-alice"}),
            imap_capability=imap_capability,
        )
        for attempt in range(3):
            # A port found free can be taken by a parallel test run before Dovecot
            # binds it: retry with new ports.
            imap_port, tls_port, lmtp_port = _free_ports(3)
            server.port = imap_port
            server.tls_port = tls_port if tls else None
            server.lmtp_port = lmtp_port if _has_lmtp() else None
            server.write_config()
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
