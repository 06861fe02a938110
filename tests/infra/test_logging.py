"""Log output: human lines by default, one JSON object per line on request."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from gateway.logging_setup import configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_human_format_has_time_level_logger_message_and_extras() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "human", stream)
    logging.getLogger("gateway.test").info("stored %s", "x", extra={"uid": "abc"})
    line = stream.getvalue().strip()
    assert line.endswith("INFO gateway.test: stored x uid='abc'")
    assert line[:4].isdigit()


def test_json_format_is_one_object_per_line_with_extras_and_exception() -> None:
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream)
    log = logging.getLogger("gateway.test")
    log.debug("first", extra={"message_id": "<m@x>"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("second")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "first"
    assert first["level"] == "DEBUG"
    assert first["logger"] == "gateway.test"
    assert first["message_id"] == "<m@x>"
    assert "ValueError: boom" in second["exc"]


def test_level_filters_and_reconfiguring_does_not_duplicate() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "human", stream)
    configure_logging("WARNING", "human", stream)
    logging.getLogger("gateway.test").info("hidden")
    logging.getLogger("gateway.test").warning("shown")
    assert stream.getvalue().count("shown") == 1
    assert "hidden" not in stream.getvalue()


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("INFO", "xml")
