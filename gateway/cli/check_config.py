"""``imip-gateway check-config``: validate and print the effective configuration."""

from __future__ import annotations

import json
from typing import Any

from gateway.cli.base import EXIT_OK, Context, Subparsers, add_command
from gateway.config import env_bindings

DESCRIPTION = """\
Load the configuration (file, then IMIP_GATEWAY_* environment overrides), validate it
and print the effective values with every secret shown as ***.  A bad file or value
prints the file (or variable), the key and the reason and exits 2.

exit codes: 0 valid, 2 invalid."""


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "check-config",
        run,
        help="validate the configuration and print it (secrets masked)",
        description=DESCRIPTION,
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    out.add_argument(
        "--env",
        action="store_true",
        help="list the environment variables that override each key",
    )


def run(ctx: Context) -> int:
    if ctx.args.env:
        for binding in env_bindings():
            print(f"{binding.name}\t{binding.dotted}\t{binding.kind}")
        return EXIT_OK
    data = ctx.settings.masked()
    if ctx.args.json:
        print(json.dumps(data, indent=2))
    else:
        source = ctx.config_path or "built-in defaults"
        print(f"# effective configuration: {source} + environment; secrets masked")
        print(to_toml(data), end="")
    return EXIT_OK


# A small TOML writer for the shapes the schema produces (tables, arrays of tables,
# scalars, lists of scalars, string maps): tomllib reads but does not write.


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value), ensure_ascii=False)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(name: str, data: dict[str, Any], header: str, out: list[str]) -> None:
    scalars = {
        k: v
        for k, v in data.items()
        if not (isinstance(v, dict) and k not in _INLINE_MAPS) and not _is_table_list(v)
    }
    if header:
        out.append(f"\n{header}")
    for key, value in scalars.items():
        if value is None:
            out.append(f"# {key} = (unset)")
        else:
            out.append(f"{_key(key)} = {_value(value)}")
    for key, value in data.items():
        if key in scalars:
            continue
        sub = f"{name}.{key}" if name else key
        if isinstance(value, dict):
            _table(sub, value, f"[{sub}]", out)
        else:
            for item in value:
                _table(sub, item, f"[[{sub}]]", out)


# Maps whose keys are data (user names), printed inline rather than as sub-tables.
_INLINE_MAPS = frozenset({"auth_users"})


def to_toml(data: dict[str, Any]) -> str:
    out: list[str] = []
    _table("", data, "", out)
    return "\n".join(out).lstrip("\n") + "\n"
