"""A throwaway PostgreSQL server for the test suite.

``initdb`` + ``pg_ctl`` from ``/usr/lib/postgresql/*/bin`` in a temporary directory,
listening on 127.0.0.1 and a free port, trust authentication, durability switched off
(the data is thrown away).  initdb and postgres refuse to run as root, so under root
(CI) they run as the ``postgres`` system user in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin", "running_postgres"]

SERVICE_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine (binaries or user missing)."""


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """libpq connection string (for psycopg directly)."""
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` holding initdb and pg_ctl (or on PATH)."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries not found (looked for /usr/lib/postgresql/*/bin/initdb"
        " and initdb on PATH); install them with `apt-get install postgresql`"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_service_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """Command prefix running a program as a non-root user, and that user."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {SERVICE_USER!r} system user to run"
            " PostgreSQL as (initdb refuses root); install the postgresql package"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and runuser(1) is missing")
    return [runuser, "-u", SERVICE_USER, "--"], account


def _run(cmd: list[str], log: Path) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        server_log = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(
            f"{' '.join(cmd)} failed with status {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}\n{server_log}"
        )


@contextlib.contextmanager
def running_postgres(
    *, durable: bool = False, settings: Mapping[str, str] | None = None
) -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL server; stop it and delete its files on exit.

    ``durable=False`` (the suite) switches fsync, synchronous commit and full-page
    writes off and stops with ``-m immediate``: the data is thrown away.  ``durable=True``
    (the benchmark, which must measure real commits) keeps PostgreSQL's defaults and
    stops with ``-m fast``.  ``settings`` adds or overrides server settings
    (``{"shared_buffers": "128MB"}``).

    Raises :class:`PostgresUnavailable` when this machine cannot run one, and
    ``RuntimeError`` (with the server log) when it should but fails to start.
    """
    bin_dir = find_pg_bin()
    prefix, account = _as_service_user()
    # Not under pytest's tmp_path: that lives in a 0700 directory of the current user,
    # which the postgres user cannot traverse.
    base = Path(tempfile.mkdtemp(prefix="imip-gateway-pg-"))
    data_dir = base / "data"
    log = base / "server.log"
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    try:
        _run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            log,
        )
        port = 0
        for attempt in range(3):
            port = _free_port()
            server: dict[str, str] = {
                "listen_addresses": "127.0.0.1",
                "port": str(port),
                "unix_socket_directories": str(base),
                "max_connections": "100",
            }
            if not durable:
                server.update(fsync="off", synchronous_commit="off", full_page_writes="off")
            server.update(settings or {})
            options = " ".join(f"-c {name}={value}" for name, value in server.items())
            try:
                _run(
                    [
                        *prefix,
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data_dir),
                        "-l",
                        str(log),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    log,
                )
                break
            except RuntimeError:
                # Another process may have taken the port between probe and bind.
                if attempt == 2:
                    raise
        try:
            yield PostgresServer("127.0.0.1", port, "postgres", bin_dir, data_dir)
        finally:
            subprocess.run(
                [
                    *prefix,
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-m",
                    "fast" if durable else "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                check=False,
                timeout=60,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
