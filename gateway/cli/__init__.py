"""The ``imip-gateway`` command line.

One module per command (``serve``, ``db``, ``check_config``, ...), each exposing
``register(subparsers)`` which adds its parser and sets ``handler`` to a function
``(Context) -> int``.  Adding a command = writing such a module and listing it in
:data:`COMMANDS`.

Exit codes (also in ``--help``): 0 success; 1 runtime failure (database unreachable,
a daemon component crashed); 2 usage or configuration error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

from gateway import __version__
from gateway.cli import check_config, db, held, ingest, inspect, outbox, schedule, serve
from gateway.cli.base import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    Context,
    Handler,
)
from gateway.config import CONFIG_ENV, ConfigError, load_config
from gateway.logging_setup import configure_logging

__all__ = ["COMMANDS", "build_parser", "main", "resolve_config_path"]

log = logging.getLogger("gateway.cli")

#: Command modules, in the order ``--help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (
    serve,
    ingest,
    schedule,
    held,
    inspect,
    outbox,
    db,
    check_config,
)

DEFAULT_CONFIG = Path("imip-gateway.toml")

_EPILOG = f"""\
configuration:
  --config FILE, else ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} if it exists, else the
  built-in defaults; then IMIP_GATEWAY_<SECTION>_<KEY> environment overrides
  (list them with `imip-gateway check-config --env`).

exit codes:
  0    success
  1    runtime failure (database unreachable, a daemon component crashed)
  2    usage or configuration error
  130  interrupted (Ctrl-C outside `serve`)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imip-gateway",
        description="Calendar scheduling by email (iMIP, RFC 6047; iTIP, RFC 5546) for mail"
        " servers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imip-gateway {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG}"
        " if present, else built-in defaults)",
    )
    parser.add_argument(
        "--log-format",
        choices=("human", "json"),
        help="log line format on stderr (default: logging.format from the config, human)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="minimum log level (default: logging.level from the config, INFO)",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in COMMANDS:
        module.register(subparsers)
    return parser


def resolve_config_path(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The configuration file to read, or ``None`` for defaults + environment only."""
    if explicit is not None:
        return explicit
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    if DEFAULT_CONFIG.is_file():
        return DEFAULT_CONFIG
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        # `imip-gateway` or `imip-gateway db` without a command: show what exists.
        getattr(args, "command_parser", parser).print_help(sys.stderr)
        return EXIT_CONFIG

    config_path = resolve_config_path(args.config, env)
    try:
        settings = load_config(config_path, env)
    except ConfigError as exc:
        print(f"imip-gateway: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG

    configure_logging(
        args.log_level or settings.logging.level, args.log_format or settings.logging.format
    )
    ctx = Context(args=args, settings=settings, config_path=config_path, environ=env)
    try:
        return handler(ctx)
    except ConfigError as exc:
        print(f"imip-gateway: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("imip-gateway: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        log.exception("command failed")
        return EXIT_FAILURE
