"""What every command module shares: the context a handler gets and the exit codes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from gateway.config import Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "Context",
    "Handler",
    "Subparsers",
    "add_command",
]

EXIT_OK = 0
#: A runtime failure: the database is unreachable, a daemon component crashed.
EXIT_FAILURE = 1
#: Usage or configuration error (argparse uses 2 as well).
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True, slots=True)
class Context:
    """What a command handler receives: parsed arguments and the loaded settings."""

    args: argparse.Namespace
    settings: Settings
    config_path: Path | None
    environ: Mapping[str, str]


Handler: TypeAlias = Callable[[Context], int]


def add_command(
    subparsers: Subparsers, name: str, handler: Handler | None, *, help: str, description: str
) -> argparse.ArgumentParser:
    """Add a command parser; ``handler=None`` for a group of sub-commands (``db``)."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, command_parser=parser)
    return parser
