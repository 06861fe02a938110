"""Logging to stderr: a human format by default, JSON lines for log collectors.

Logs go to stderr only (a supervisor such as systemd or Docker collects them); stdout
stays free for command output (``check-config``, ``db current``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["HumanFormatter", "JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is
# emitted as a structured field.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class HumanFormatter(logging.Formatter):
    """``2026-11-21T19:42:49.123Z INFO gateway.daemon: message key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        line = (
            f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}:"
            f" {record.getMessage()}"
        )
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v!r}" for k, v in sorted(extras.items()))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, extras, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "INFO", fmt: str = "human", stream: TextIO | None = None
) -> None:
    """Send all logging to ``stream`` (stderr) in format ``fmt`` ("human" or "json").

    Replaces the root logger's handlers, so calling it twice does not duplicate lines.
    """
    if fmt not in ("human", "json"):
        raise ValueError(f"unknown log format {fmt!r} (expected human or json)")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else HumanFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter at INFO (aiosmtpd and aioimaplib log every connection, alembic
    # every plugin it loads) drowns our own lines; keep it only at DEBUG.
    if level.upper() != "DEBUG":
        for noisy in ("mail.log", "aioimaplib", "alembic.runtime"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
