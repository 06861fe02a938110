"""The command line: help, version, config resolution, check-config, db, serve + SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.cli import main
from gateway.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    # main() configures logging for the process; give pytest its handlers back.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def write_config(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _drop_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data


# ---------------------------------------------------------------------- help/version


def _command_paths() -> list[tuple[list[str], bool]]:
    """Every command path of the real parser, and whether it is a leaf command."""
    import argparse

    from gateway.cli import build_parser

    out: list[tuple[list[str], bool]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        out.append((prefix, not subs))
        for action in subs:
            for name, child in action.choices.items():
                walk(child, [*prefix, name])

    walk(build_parser(), [])
    return out


@pytest.mark.parametrize(
    ("path", "leaf"), _command_paths(), ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_every_command_has_help(
    path: list[str], leaf: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"], environ={})
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: imip-gateway")
    if leaf or not path:
        assert "exit codes" in out


def test_every_documented_command_exists() -> None:
    names = {" ".join(p) for p, _ in _command_paths()}
    for expected in (
        "serve",
        "ingest",
        "send",
        "events list",
        "events show",
        "replies",
        "messages list",
        "messages show",
        "outbox list",
        "outbox retry",
        "outbox purge",
        "counter accept",
        "counter decline",
        "held list",
        "held accept",
        "held discard",
        "db upgrade",
        "db current",
        "check-config",
    ):
        assert expected in names


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"], environ={})
    out = capsys.readouterr().out
    for command in ("serve", "db", "check-config"):
        assert command in out
    assert "2    usage or configuration error" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"], environ={})
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"imip-gateway {__version__}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], environ={}) == 2
    assert "usage: imip-gateway" in capsys.readouterr().err
    assert main(["db"], environ={}) == 2


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"], environ={})
    assert exit_.value.code == 2


# ----------------------------------------------------------------------- check-config

SECRET_CONFIG = """\
[database]
url = "postgresql+psycopg://gw:db-s3cret@db:5432/gw"
[listeners.smtp]
auth_users = { postfix = "smtp-s3cret" }
[relay]
username = "gw"
password = "relay-s3cret"
[[users]]
address = "Alice@Example.org"
"""


def test_check_config_prints_effective_toml_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, SECRET_CONFIG)
    env = {"IMIP_GATEWAY_RELAY_PORT": "2525"}
    assert main(["--config", str(path), "check-config"], environ=env) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    printed = tomllib.loads(out)
    expected = _drop_none(load_config(path, env).masked())
    assert printed == expected
    assert printed["relay"]["port"] == 2525
    assert printed["users"][0]["address"] == "alice@example.org"


def test_check_config_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, SECRET_CONFIG)
    assert main(["--config", str(path), "check-config", "--json"], environ={}) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == load_config(path, {}).masked()
    assert "s3cret" not in out


def test_check_config_env_lists_the_override_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--env"], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "IMIP_GATEWAY_DATABASE_URL\tdatabase.url\tscalar" in lines
    assert "IMIP_GATEWAY_USERS\tusers\tjson" in lines


def test_bad_config_exits_2_naming_file_key_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, '[relay]\nport = "smtp"\n')
    assert main(["--config", str(path), "check-config"], environ={}) == 2
    err = capsys.readouterr().err
    assert f"{path}: relay.port: Input should be a valid integer" in err


def test_missing_explicit_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "check-config"], environ={}) == 2
    assert "nope.toml: cannot read" in capsys.readouterr().err


# ------------------------------------------------------------------ config resolution


def _printed_relay_host(capsys: pytest.CaptureFixture[str]) -> str:
    return str(json.loads(capsys.readouterr().out)["relay"]["host"])


def test_config_from_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, '[relay]\nhost = "from-env-file"\n')
    assert main(["check-config", "--json"], environ={"IMIP_GATEWAY_CONFIG": str(path)}) == 0
    assert _printed_relay_host(capsys) == "from-env-file"


def test_config_from_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, '[relay]\nhost = "from-cwd"\n', name="imip-gateway.toml")
    monkeypatch.chdir(tmp_path)
    assert main(["check-config", "--json"], environ={}) == 0
    assert _printed_relay_host(capsys) == "from-cwd"


def test_explicit_config_beats_environment_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = write_config(tmp_path, '[relay]\nhost = "explicit"\n', name="a.toml")
    other = write_config(tmp_path, '[relay]\nhost = "env"\n', name="b.toml")
    env = {"IMIP_GATEWAY_CONFIG": str(other)}
    assert main(["--config", str(chosen), "check-config", "--json"], environ=env) == 0
    assert _printed_relay_host(capsys) == "explicit"


def test_no_config_anywhere_uses_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["check-config", "--json"], environ={}) == 0
    assert _printed_relay_host(capsys) == "127.0.0.1"


# --------------------------------------------------------------------------- db


def _db_config(tmp_path: Path, url: str) -> Path:
    return write_config(tmp_path, f'[database]\nurl = "{url}"\n')


def _check_db_commands(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.store import migrate

    path = _db_config(tmp_path, url)
    assert main(["--config", str(path), "db", "current"], environ={}) == 0
    assert capsys.readouterr().out.strip() == "none"
    assert main(["--config", str(path), "db", "upgrade"], environ={}) == 0
    head = migrate.head()
    assert head
    assert capsys.readouterr().out.strip() == head
    assert main(["--config", str(path), "db", "current"], environ={}) == 0
    assert capsys.readouterr().out.strip() == head
    # Idempotent.
    assert main(["--config", str(path), "db", "upgrade"], environ={}) == 0


def test_db_upgrade_and_current_on_sqlite(
    tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _check_db_commands(tmp_path, sqlite_url, capsys)


@pytest.mark.postgres
def test_db_upgrade_and_current_on_postgresql(
    tmp_path: Path, fresh_postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _check_db_commands(tmp_path, fresh_postgres_url, capsys)


def test_db_command_on_unreachable_database_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A port nothing listens on (connection refused at once).
    path = _db_config(tmp_path, "postgresql+psycopg://gw@127.0.0.1:1/gw")
    assert main(["--config", str(path), "db", "current"], environ={}) == 1
    assert "command failed" in capsys.readouterr().err


# ----------------------------------------------------------------- real processes


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMIP_GATEWAY_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_bad_config_process_exit_status_is_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[listeners.smtp]\nprot = 25\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(path), "serve"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: listeners.smtp.prot: unknown key" in result.stderr


class _Lines:
    """Reads a pipe in a thread so the test can wait for a line without hanging."""

    def __init__(self, stream: Any) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, needle: str, timeout: float = 120) -> None:
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"process ended before {needle!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return

    def rest(self, timeout: float = 120) -> list[str]:
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return self.seen


def test_serve_creates_the_database_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[database]\nurl = "sqlite:///data/gateway.sqlite3"\n'
        "[listeners.smtp]\nenabled = false\n"
        '[[users]]\naddress = "alice@example.org"\n',
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config), "--log-format", "json", "serve"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(),
        cwd=tmp_path,
    )
    try:
        stderr = _Lines(process.stderr)
        stderr.wait_for("imip-gateway ready")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    lines = stderr.rest()
    records = [json.loads(line) for line in lines]  # every log line is JSON
    assert any("received SIGTERM" in r["msg"] for r in records)
    assert records[-1]["msg"] == "imip-gateway stopped cleanly"

    database = tmp_path / "data" / "gateway.sqlite3"  # relative to the working directory
    assert database.is_file()
    with sqlite3.connect(database) as conn:
        (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    from gateway.store import migrate

    assert revision == migrate.head()


def test_serve_refuses_a_database_without_the_schema(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        '[database]\nurl = "sqlite:///empty.sqlite3"\nauto_upgrade = false\n'
        "[listeners.smtp]\nenabled = false\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
        capture_output=True,
        text=True,
        env=_subprocess_env(),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "run `imip-gateway db upgrade`" in result.stderr
    assert "imip-gateway ready" not in result.stderr


@pytest.mark.parametrize("command", ["ingest", "send"])
def test_unreadable_input_file_is_a_clear_usage_error(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"IMIP_GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gw.sqlite3'}"}
    missing = tmp_path / "missing.eml"
    assert main([command, str(missing)], environ=env) == 2
    err = capsys.readouterr().err
    assert f"cannot read {missing}" in err
    assert "Traceback" not in err
