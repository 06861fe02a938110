"""The one typed settings schema: TOML file + ``IMIP_GATEWAY_*`` environment overrides.

Loaded once by the CLI (:func:`load_config`) and passed down as plain values; nothing
below the composition root reads files or the environment for configuration.

Precedence, lowest first: schema defaults < TOML file < environment.  The environment
variable names are *computed from the schema* (:func:`env_bindings`) so the docs,
the loader and the tests cannot drift apart:

* a scalar key of a section: ``IMIP_GATEWAY_<SECTION>_<KEY>``, nested sections join
  their names (``IMIP_GATEWAY_LISTENERS_SMTP_PORT``);
* a list of scalars: a JSON array or a comma-separated string
  (``IMIP_GATEWAY_IDENTITY_TRUSTED_AUTHSERV_IDS=mx.example.org,mx2.example.org``);
* a table of tables or a list of tables (``auth_users``, ``[[users]]``,
  ``[[imap.accounts]]``): a JSON value (``IMIP_GATEWAY_USERS='[{"address": ...}]'``).

A bad file or value raises :class:`ConfigError` naming the file (or variable), the
dotted key and the reason.
"""

from __future__ import annotations

import json
import re
import socket
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.domain.addresses import normalise

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "RESERVED_ENV",
    "BookingConfig",
    "ConfigError",
    "DatabaseConfig",
    "EnvBinding",
    "GatewayConfig",
    "IdentityConfig",
    "ImapAccountConfig",
    "ImapConfig",
    "ListenerConfig",
    "ListenersConfig",
    "LmtpListenerConfig",
    "LoggingConfig",
    "RelayConfig",
    "Settings",
    "SmtpListenerConfig",
    "UserConfig",
    "env_bindings",
    "load_config",
    "mask_url",
]

ENV_PREFIX = "IMIP_GATEWAY_"
#: Names the config file; read by the CLI, not an override of a key.
CONFIG_ENV = "IMIP_GATEWAY_CONFIG"
#: Variables with the prefix that are not settings (so not "unknown setting" errors):
#: the config file, and the migrations folder override read by gateway.store.migrate.
RESERVED_ENV = frozenset({CONFIG_ENV, "IMIP_GATEWAY_MIGRATIONS_DIR"})

MASK = "***"

TlsMode = Literal["implicit", "starttls", "none"]
UserKind = Literal["person", "room", "resource"]
Policy = Literal["manual", "accept", "decline", "accept-if-free", "tentative"]
PartyCrashers = Literal["accept", "ignore", "hold"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["human", "json"]

# Marks a field whose value must never be printed (``Settings.masked``).  ``"value"``
# masks the value, ``"mapping"`` the values of a mapping, ``"url"`` the password of a URL.
_SENSITIVE = "sensitive"


def _secret(kind: Literal["value", "mapping", "url"] = "value") -> dict[str, Any]:
    return {_SENSITIVE: kind}


class ConfigError(Exception):
    """The configuration file or an environment override is unusable.

    The message names the source (file path or environment variable), the dotted key
    and the reason; the CLI prints it and exits with status 2.
    """


class _Section(BaseModel):
    """Base of every section: unknown keys are errors (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _valid_address(value: str) -> str:
    addr = normalise(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or "." not in domain:
        raise ValueError(f"{value!r} is not a mail address (expected local@domain.tld)")
    return addr


# --------------------------------------------------------------------------- sections


class GatewayConfig(_Section):
    """``[gateway]``: identity of this gateway and limits on what it will process."""

    # Used in generated Message-IDs and the default envelope sender; empty = the
    # machine's fully qualified name at load time.
    hostname: str = Field(default_factory=socket.getfqdn)
    # Directory for runtime files (relative to the working directory).
    state_dir: Path = Path("var")
    # RFC 5546 section 2.1.4: a change of one of these properties is "significant":
    # the organiser bumps SEQUENCE and attendees' PARTSTAT is reset to NEEDS-ACTION.
    significant_properties: list[str] = Field(
        default_factory=lambda: [
            "DTSTART",
            "DTEND",
            "DURATION",
            "DUE",
            "RRULE",
            "RDATE",
            "EXDATE",
            "STATUS",
            "LOCATION",
        ]
    )
    # Automatic replies (REPLY, DECLINECOUNTER, REFRESH answers) to one correspondent
    # per hour; protects against mail loops with another auto-responder (RFC 3834).
    auto_reply_limit_per_hour: int = Field(default=30, ge=0)
    # Bound on the instances one recurrence rule may expand to.
    max_recurrence_instances: int = Field(default=1000, ge=1)
    max_message_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_calendar_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    max_attendees: int = Field(default=2000, ge=1)
    # On SIGTERM, in-flight work gets this long to finish before it is cancelled.
    shutdown_timeout_seconds: float = Field(default=30, gt=0)
    # A message being processed is leased for this long; a worker that died (SIGKILL,
    # power loss) leaves it leased, and it is processed again once the lease expires.
    processing_lease_seconds: float = Field(default=60, gt=0)
    # Run journal processing and the outbox in a second process, started and
    # supervised by `serve`, so SMTP/LMTP/IMAP intake and processing each get a CPU
    # core (Python runs one thread of bytecode at a time).  false = one process.
    processing_process: bool = True
    # Journal drain loops run side by side, each claiming its own batch (like that many
    # replicas).  0 = automatic: 1 on SQLite (one writer: more loops only queue for the
    # write lock and store thread), min(4, database.pool_size - 2) on PostgreSQL, where
    # one loop leaves the CPU idle during round trips.  On PostgreSQL each loop needs a
    # pooled connection of its own (checked against database.pool_size).
    processing_concurrency: int = Field(default=0, ge=0)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        value = value.strip()
        return value or socket.getfqdn()

    @field_validator("significant_properties")
    @classmethod
    def _properties(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for name in value:
            upper = name.strip().upper()
            if not re.fullmatch(r"[A-Z][A-Z0-9-]*", upper):
                raise ValueError(f"{name!r} is not an iCalendar property name")
            if upper not in out:
                out.append(upper)
        return out


class DatabaseConfig(_Section):
    """``[database]``: SQLite (embedded default) or PostgreSQL."""

    # SQLAlchemy URL.  ``sqlite:///relative/path`` is relative to the working
    # directory, ``sqlite:////abs/path`` absolute; ``postgresql+psycopg://u:p@host/db``.
    url: str = Field(default="sqlite:///var/imip-gateway.sqlite3", json_schema_extra=_secret("url"))
    # ``serve`` creates/upgrades the schema on SQLite before starting.  Never done on
    # PostgreSQL, where several replicas could race: run ``imip-gateway db upgrade``.
    auto_upgrade: bool = True
    pool_size: int = Field(default=5, ge=1)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        scheme = value.partition("://")[0].partition("+")[0]
        if "://" not in value or scheme not in {"sqlite", "postgresql", "postgres"}:
            raise ValueError(
                "expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def is_postgresql(self) -> bool:
        return self.url.startswith("postgres")

    def sqlite_path(self) -> Path | None:
        """The database file of a SQLite URL (``None`` for PostgreSQL or in-memory)."""
        if not self.is_sqlite:
            return None
        rest = self.url.partition("://")[2].partition("?")[0]
        # sqlite:///rel -> "/rel" (relative), sqlite:////abs -> "//abs" (absolute).
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            return None
        return Path(path)


class ListenerConfig(_Section):
    """An SMTP or LMTP listener the MTA delivers to (``[listeners.smtp|lmtp]``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0 picks a free port (tests).
    port: int = Field(default=10025, ge=0, le=65535)
    # Larger messages are refused at DATA with 552; unset = ``gateway.max_message_bytes``.
    max_message_bytes: int | None = Field(default=None, ge=1024)
    # STARTTLS is offered when both are set (PEM files).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    require_tls: bool = False
    # user -> password; when non-empty, AUTH is required before MAIL.
    auth_users: dict[str, str] = Field(default_factory=dict, json_schema_extra=_secret("mapping"))
    # Outbound relay mode: mail FROM a local organiser is processed as the organiser's
    # outgoing scheduling message (the organiser copy is recorded) and relayed unchanged.
    relay_mode: bool = False
    # CIDR networks whose clients may relay without AUTH (relay_mode, content_filter);
    # empty = AUTH only.
    relay_trusted_networks: list[str] = Field(default_factory=list)
    # After-queue content filter (Postfix content_filter / Exim): accept any recipient
    # from trusted clients, process the calendar parts for local users, and hand every
    # message back unchanged through [relay] (the MTA's re-injection listener).
    content_filter: bool = False

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("require_tls needs tls_cert and tls_key")
        return self


class SmtpListenerConfig(ListenerConfig):
    enabled: bool = True
    port: int = Field(default=10025, ge=0, le=65535)


class LmtpListenerConfig(ListenerConfig):
    enabled: bool = False
    port: int = Field(default=10024, ge=0, le=65535)


class ListenersConfig(_Section):
    smtp: SmtpListenerConfig = Field(default_factory=SmtpListenerConfig)
    lmtp: LmtpListenerConfig = Field(default_factory=LmtpListenerConfig)


class ImapAccountConfig(_Section):
    """``[[imap.accounts]]``: a mailbox polled (IDLE) for invitations of one local user."""

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    port: int = Field(default=993, ge=1, le=65535)
    tls: TlsMode = "implicit"
    # PEM bundle of the CA that signed the server's certificate (a private CA); unset =
    # the system's trust store.
    tls_ca_file: Path | None = None
    username: str = Field(min_length=1)
    password: str = Field(default="", repr=False, json_schema_extra=_secret())
    mailbox: str = "INBOX"
    # The local calendar user this mailbox belongs to (the iTIP recipient).
    recipient: str
    # Processed / failed messages are moved here when set (else left in place).
    processed_folder: str | None = None
    failed_folder: str | None = None
    # \Seen is set only after the journal row is committed (ARCHITECTURE.md section 6).
    # Meant for a mailbox dedicated to the gateway: on a mailbox a person also reads,
    # set it to false (or use processed_folder) so their other mail stays unread.
    mark_seen: bool = True
    use_idle: bool = True
    poll_interval_seconds: float = Field(default=60, gt=0)
    # An idle connection to a dead server may not notice for a long time: NOOP this often.
    liveness_interval_seconds: float = Field(default=5, gt=0)
    reconnect_max_seconds: float = Field(default=300, gt=0)

    @field_validator("recipient")
    @classmethod
    def _recipient(cls, value: str) -> str:
        return _valid_address(value)


class ImapConfig(_Section):
    accounts: list[ImapAccountConfig] = Field(default_factory=list)

    @field_validator("accounts")
    @classmethod
    def _unique_names(cls, value: list[ImapAccountConfig]) -> list[ImapAccountConfig]:
        seen: set[str] = set()
        for account in value:
            if account.name in seen:
                raise ValueError(f"account name {account.name!r} is used twice")
            seen.add(account.name)
        return value


class RelayConfig(_Section):
    """``[relay]``: the smarthost outgoing iTIP mail is handed to."""

    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    tls: TlsMode = "none"
    username: str = ""
    password: str = Field(default="", repr=False, json_schema_extra=_secret())
    timeout_seconds: float = Field(default=30, gt=0)
    max_connections: int = Field(default=2, ge=1)
    # Temporary failures (4xx, network) retry with exponential backoff and jitter.
    retry_initial_seconds: float = Field(default=60, gt=0)
    retry_max_seconds: float = Field(default=3600, gt=0)
    # After this long a message that still fails temporarily is given up (like an MTA's
    # maximal queue lifetime) and recorded as failed.
    max_age_hours: float = Field(default=72, gt=0)
    # How often the outbox looks for due rows it was not woken for (rows queued by the
    # CLI or another replica); retries this process scheduled wake it on time anyway.
    poll_interval_seconds: float = Field(default=5, gt=0)
    # Envelope sender of mail the gateway originates; empty = imip-gateway@<hostname>.
    from_address: str = ""

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        return _valid_address(value) if value.strip() else ""

    @model_validator(mode="after")
    def _auth_pair(self) -> Self:
        if bool(self.username) != bool(self.password):
            raise ValueError("username and password must be set together")
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds is smaller than retry_initial_seconds")
        return self


class BookingConfig(_Section):
    """``[users.booking]``: what a room or resource accepts automatically."""

    # How far ahead it can be booked; 0 = unlimited.
    window_days: int = Field(default=180, ge=0)
    # Longest booking; 0 = unlimited.
    max_duration_minutes: int = Field(default=0, ge=0)
    allow_recurring: bool = True
    # A recurring booking is still accepted when at most this many instances (and at
    # most this percentage of them) conflict; the conflicting ones are declined.
    max_conflicting_instances: int = Field(default=0, ge=0)
    max_conflict_percent: float = Field(default=0.0, ge=0.0, le=100.0)
    # Addresses or "@domain" patterns allowed to book; empty = anyone.
    allowed_organizers: list[str] = Field(default_factory=list)

    @field_validator("allowed_organizers")
    @classmethod
    def _organizers(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for item in value:
            text = item.strip().lower()
            if text.startswith("@"):
                if len(text) < 3 or "." not in text:
                    raise ValueError(f"{item!r} is not a domain pattern (expected @example.org)")
                out.append(text)
            else:
                out.append(_valid_address(text))
        return out


class UserConfig(_Section):
    """``[[users]]``: a local calendar user (person, room or resource)."""

    address: str
    aliases: list[str] = Field(default_factory=list)
    display_name: str = ""
    kind: UserKind = "person"
    # What to do with an invitation: rooms and resources default to accept-if-free,
    # people to manual (record it and let the person answer).
    policy: Policy = "manual"
    # RFC 5546 section 3.2.3: a REPLY from someone not invited ("party crasher").
    party_crashers: PartyCrashers = "hold"
    booking: BookingConfig = Field(default_factory=BookingConfig)

    @model_validator(mode="before")
    @classmethod
    def _default_policy(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "policy" not in data:
            kind = data.get("kind", "person")
            if kind in ("room", "resource"):
                return {**data, "policy": "accept-if-free"}
        return data

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return _valid_address(value)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        return [_valid_address(v) for v in value]

    @property
    def addresses(self) -> tuple[str, ...]:
        """The primary address followed by the aliases, all normalised."""
        return (self.address, *self.aliases)


class IdentityConfig(_Section):
    """``[identity]``: how much the transport must prove about a sender."""

    # authserv-ids (RFC 8601) of our own MTAs whose Authentication-Results we believe.
    trusted_authserv_ids: list[str] = Field(default_factory=list)
    # Addresses that send on behalf of attendees with the attendee in Reply-To (e.g.
    # Google's calendar-notification address).
    attendee_relays: list[str] = Field(default_factory=list)
    require_dmarc_pass: bool = False
    # Refuse what RFC 5546 says must not happen (e.g. an update not from the stored
    # ORGANIZER, section 6.1.3) instead of holding it for review.
    strict: bool = True

    @field_validator("attendee_relays")
    @classmethod
    def _relays(cls, value: list[str]) -> list[str]:
        return [_valid_address(v) for v in value]

    @field_validator("trusted_authserv_ids")
    @classmethod
    def _authserv(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value if v.strip()]


class LoggingConfig(_Section):
    level: LogLevel = "INFO"
    format: LogFormat = "human"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value


class Settings(BaseModel):
    """The whole effective configuration (treat as read-only)."""

    model_config = ConfigDict(extra="forbid")

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    listeners: ListenersConfig = Field(default_factory=ListenersConfig)
    imap: ImapConfig = Field(default_factory=ImapConfig)
    relay: RelayConfig = Field(default_factory=RelayConfig)
    users: list[UserConfig] = Field(default_factory=list)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("users")
    @classmethod
    def _addresses_unique(cls, users: list[UserConfig]) -> list[UserConfig]:
        # One address, one calendar user: otherwise who answers an invitation would
        # depend on the order of the file.
        owner: dict[str, str] = {}
        for user in users:
            for addr in user.addresses:
                if addr in owner:
                    raise ValueError(
                        f"address {addr!r} is used twice (users {owner[addr]!r} and"
                        f" {user.address!r})"
                    )
                owner[addr] = user.address
        return users

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        local = {addr for user in self.users for addr in user.addresses}
        for account in self.imap.accounts:
            if account.recipient not in local:
                raise ValueError(
                    f"imap account {account.name!r}: recipient {account.recipient!r}"
                    " is not a configured user address or alias"
                )
        # Derived defaults are filled in here so that the effective configuration
        # (check-config) shows the values actually used.
        if not self.relay.from_address:
            self.relay = self.relay.model_copy(
                update={"from_address": normalise(f"imip-gateway@{self.gateway.hostname}")}
            )
        default_max = self.gateway.max_message_bytes
        updates: dict[str, ListenerConfig] = {}
        for name in ("smtp", "lmtp"):
            listener: ListenerConfig = getattr(self.listeners, name)
            if listener.max_message_bytes is None:
                updates[name] = listener.model_copy(update={"max_message_bytes": default_max})
        if updates:
            self.listeners = self.listeners.model_copy(update=updates)
        concurrency = _processing_concurrency(self.gateway, self.database)
        if concurrency != self.gateway.processing_concurrency:
            self.gateway = self.gateway.model_copy(update={"processing_concurrency": concurrency})
        return self

    def local_user(self, address: str) -> UserConfig | None:
        """The local user owning ``address`` (primary or alias; any case or ``mailto:``)."""
        addr = normalise(address)
        for user in self.users:
            if addr in user.addresses:
                return user
        return None

    def masked(self) -> dict[str, Any]:
        """The effective configuration as plain data with every secret shown as ``***``."""
        return _mask(self)


# Pooled connections kept free of the processing loops: one for the outbox worker's
# claims and results, one for the rest (IMAP state, delivery failures, CLI work).  The
# store runs one thread per pooled connection, so a loop never waits for a connection
# and the outbox never waits behind a batch.
POOL_RESERVE = 2
_AUTO_CONCURRENCY = 4


def _processing_concurrency(gateway: GatewayConfig, database: DatabaseConfig) -> int:
    """The effective ``gateway.processing_concurrency`` (0 = automatic), validated."""
    wanted = gateway.processing_concurrency
    if database.is_sqlite:
        # One writer and one store thread: extra loops are harmless (they take turns on
        # that thread) but buy nothing, so the automatic value is 1.
        return wanted or 1
    if wanted == 0:
        return max(1, min(_AUTO_CONCURRENCY, database.pool_size - POOL_RESERVE))
    if database.pool_size < wanted + POOL_RESERVE:
        raise ValueError(
            f"database.pool_size = {database.pool_size} is too small for"
            f" gateway.processing_concurrency = {wanted}: it needs at least"
            f" {wanted + POOL_RESERVE} (one connection per processing loop plus"
            f" {POOL_RESERVE} for the outbox and other work)"
        )
    return wanted


def _mask(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        extra = field.json_schema_extra
        kind = extra.get(_SENSITIVE) if isinstance(extra, dict) else None
        if isinstance(value, BaseModel):
            out[name] = _mask(value)
        elif isinstance(value, list):
            out[name] = [_mask(v) if isinstance(v, BaseModel) else _plain(v) for v in value]
        elif kind == "value":
            out[name] = MASK if value else ""
        elif kind == "mapping":
            out[name] = dict.fromkeys(value, MASK)
        elif kind == "url":
            out[name] = mask_url(str(value))
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# Greedy up to the last "@": a password with an unencoded "@" is still masked whole
# (masking too much is the safe direction).
_URL_PASSWORD = re.compile(r"^(?P<head>[^:/]+://[^:/@]*:)(?P<password>.*)(?P<tail>@[^@]*)$")


def mask_url(url: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db``."""
    return _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], url)


# ------------------------------------------------------------------ env var bindings

EnvKind = Literal["scalar", "list", "json"]


@dataclass(frozen=True, slots=True)
class EnvBinding:
    """One environment variable and the key it overrides."""

    name: str
    path: tuple[str, ...]
    kind: EnvKind
    # An empty value of an optional key means "unset" (None).
    optional: bool = False

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    if origin is Annotated:
        return typing.get_args(annotation)[0], False
    return annotation, False


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk_env(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[EnvBinding]:
    for name, field in model.model_fields.items():
        sub = (*path, name)
        annotation, optional = _unwrap_optional(field.annotation)
        origin = typing.get_origin(annotation)
        env = ENV_PREFIX + "_".join(sub).upper()
        if _is_model(annotation):
            yield from _walk_env(annotation, sub)
        elif origin is list:
            (item,) = typing.get_args(annotation)
            yield EnvBinding(env, sub, "json" if _is_model(item) else "list")
        elif origin is dict:
            yield EnvBinding(env, sub, "json")
        else:
            yield EnvBinding(env, sub, "scalar", optional)


def env_bindings() -> tuple[EnvBinding, ...]:
    """Every environment override the schema accepts, in schema order."""
    return tuple(_walk_env(Settings, ()))


def _env_value(binding: EnvBinding, raw: str) -> Any:
    if binding.kind == "json":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"environment variable {binding.name}: {binding.dotted}: invalid JSON: {exc}"
            ) from None
    if binding.kind == "list":
        text = raw.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"environment variable {binding.name}: {binding.dotted}: invalid JSON: {exc}"
                ) from None
        return [part.strip() for part in text.split(",") if part.strip()]
    if binding.optional and not raw.strip():
        return None
    return raw


def _set_path(data: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = data
    for key in path[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path)}: {key!r} is not a table")
        node = child
    node[path[-1]] = value


# ---------------------------------------------------------------------------- loading


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _error_source(
    loc: tuple[int | str, ...], overrides: Mapping[tuple[str, ...], EnvBinding], file: str
) -> str:
    for path, binding in overrides.items():
        if loc[: len(path)] == path:
            return f"environment variable {binding.name}"
    # An error about a whole table (e.g. "tls_cert and tls_key must be set together")
    # may come from an override of one of its keys: name both sources.
    inside = [b.name for path, b in overrides.items() if loc and path[: len(loc)] == loc]
    if inside:
        return f"{file} with environment variable {', '.join(inside)}"
    return file


def load_config(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Read ``path`` (``None`` = defaults only), apply overrides from ``environ``.

    Raises :class:`ConfigError` with the file or variable, the dotted key and the reason.
    """
    file_label = str(path) if path is not None else "built-in defaults"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    bindings = {b.name: b for b in env_bindings()}
    overrides: dict[tuple[str, ...], EnvBinding] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        binding = bindings.get(name)
        if binding is None:
            # A mistyped override silently ignored would be worse than an error.
            raise ConfigError(
                f"environment variable {name}: unknown setting"
                f" (see `imip-gateway check-config --env` for the accepted names)"
            )
        _set_path(data, binding.path, _env_value(binding, environ[name]), f"environment {name}")
        overrides[binding.path] = binding

    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            source = _error_source(loc, overrides, file_label)
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown key"
            lines.append(f"{source}: {_dotted(loc)}: {reason}")
        raise ConfigError("\n".join(lines)) from None
