"""The settings schema: defaults, file < environment precedence, errors, masking, docs."""

from __future__ import annotations

import json
import socket
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.config import (
    ConfigError,
    Settings,
    env_bindings,
    load_config,
    mask_url,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "gateway.example.toml"
DEV = ROOT / "config" / "gateway.dev.toml"


def write(tmp_path: Path, text: str, name: str = "gateway.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------ defaults


def test_defaults_without_file_or_environment() -> None:
    settings = load_config(None, {})
    assert settings.gateway.hostname == socket.getfqdn()
    assert settings.database.url == "sqlite:///var/imip-gateway.sqlite3"
    assert settings.database.sqlite_path() == Path("var/imip-gateway.sqlite3")
    assert (settings.listeners.smtp.enabled, settings.listeners.smtp.port) == (True, 10025)
    assert (settings.listeners.lmtp.enabled, settings.listeners.lmtp.port) == (False, 10024)
    assert settings.gateway.significant_properties == [
        "DTSTART", "DTEND", "DURATION", "DUE", "RRULE", "RDATE", "EXDATE", "STATUS", "LOCATION",
    ]  # fmt: skip
    assert settings.users == []
    assert settings.logging.format == "human"


def test_derived_defaults_follow_other_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[gateway]\nhostname = "gw.example.net"\nmax_message_bytes = 5000\n'
        "[listeners.lmtp]\nmax_message_bytes = 4096\n",
    )
    settings = load_config(path, {})
    assert settings.relay.from_address == "imip-gateway@gw.example.net"
    assert settings.listeners.smtp.max_message_bytes == 5000
    assert settings.listeners.lmtp.max_message_bytes == 4096


def test_empty_hostname_means_the_machine_name(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, '[gateway]\nhostname = ""\n'), {})
    assert settings.gateway.hostname == socket.getfqdn()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///var/x.sqlite3", Path("var/x.sqlite3")),
        ("sqlite:////srv/gw/x.sqlite3", Path("/srv/gw/x.sqlite3")),
        ("sqlite:///:memory:", None),
        ("postgresql+psycopg://u:p@db/gw", None),
    ],
)
def test_sqlite_path_of_database_url(url: str, expected: Path | None) -> None:
    settings = load_config(None, {"IMIP_GATEWAY_DATABASE_URL": url})
    assert settings.database.sqlite_path() == expected


# ---------------------------------------------------------------------- precedence


def test_environment_overrides_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\nurl = "sqlite:///from-file.sqlite3"\npool_size = 7\n'
        '[relay]\nhost = "file.example.org"\nport = 2525\n'
        "[listeners.smtp]\nport = 2026\n",
    )
    env = {
        "IMIP_GATEWAY_DATABASE_URL": "postgresql+psycopg://gw:pw@db:5432/gw",
        "IMIP_GATEWAY_RELAY_HOST": "env.example.org",
        "IMIP_GATEWAY_LISTENERS_SMTP_PORT": "3025",
        "IMIP_GATEWAY_LISTENERS_LMTP_ENABLED": "true",
        "IMIP_GATEWAY_DATABASE_ECHO": "false",
    }
    settings = load_config(path, env)
    assert settings.database.url == "postgresql+psycopg://gw:pw@db:5432/gw"
    assert settings.database.pool_size == 7  # from the file, not overridden
    assert settings.relay.host == "env.example.org"
    assert settings.relay.port == 2525  # from the file
    assert settings.listeners.smtp.port == 3025
    assert settings.listeners.lmtp.enabled is True
    assert settings.gateway.max_attendees == 2000  # default


def test_list_sections_from_json_environment() -> None:
    env = {
        "IMIP_GATEWAY_USERS": json.dumps(
            [
                {"address": "alice@example.org", "aliases": ["A.Smith@Example.org"]},
                {"address": "room@example.org", "kind": "room"},
            ]
        ),
        "IMIP_GATEWAY_IMAP_ACCOUNTS": json.dumps(
            [{"name": "a", "host": "imap", "username": "a", "recipient": "alice@example.org"}]
        ),
        "IMIP_GATEWAY_LISTENERS_SMTP_AUTH_USERS": '{"mta": "s3cret"}',
    }
    settings = load_config(None, env)
    assert [u.address for u in settings.users] == ["alice@example.org", "room@example.org"]
    assert settings.users[0].aliases == ["a.smith@example.org"]
    assert settings.imap.accounts[0].port == 993
    assert settings.listeners.smtp.auth_users == {"mta": "s3cret"}


def test_string_lists_from_comma_separated_or_json_environment() -> None:
    settings = load_config(
        None,
        {
            "IMIP_GATEWAY_IDENTITY_TRUSTED_AUTHSERV_IDS": "MX1.example.org, mx2.example.org",
            "IMIP_GATEWAY_IDENTITY_ATTENDEE_RELAYS": '["calendar-notification@google.com"]',
        },
    )
    assert settings.identity.trusted_authserv_ids == ["mx1.example.org", "mx2.example.org"]
    assert settings.identity.attendee_relays == ["calendar-notification@google.com"]


def test_empty_environment_value_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[listeners.smtp]\ntls_cert = "c.pem"\ntls_key = "k.pem"\n')
    assert load_config(path, {}).listeners.smtp.tls_cert == Path("c.pem")
    env = {"IMIP_GATEWAY_LISTENERS_SMTP_TLS_CERT": "", "IMIP_GATEWAY_LISTENERS_SMTP_TLS_KEY": ""}
    assert load_config(path, env).listeners.smtp.tls_cert is None


def test_reserved_variables_are_not_settings() -> None:
    env = {
        "IMIP_GATEWAY_CONFIG": "/nonexistent.toml",
        "IMIP_GATEWAY_MIGRATIONS_DIR": "/srv/migrations",
        "PATH": "/bin",
    }
    settings = load_config(None, env)
    assert settings.relay.host == "127.0.0.1"


# ----------------------------------------------------------------------- env names


def _leaf_paths(model: type[BaseModel], path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key an environment variable must reach: scalars, lists and maps."""
    out: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= _leaf_paths(annotation, (*path, name))
        else:
            out.add((*path, name))
    return out


def test_env_names_are_computed_from_the_schema() -> None:
    bindings = env_bindings()
    names = [b.name for b in bindings]
    assert len(names) == len(set(names)), "two keys map to one environment variable"
    assert {b.path for b in bindings} == _leaf_paths(Settings)
    by_name = {b.name: b for b in bindings}
    assert by_name["IMIP_GATEWAY_DATABASE_URL"].dotted == "database.url"
    assert by_name["IMIP_GATEWAY_RELAY_HOST"].dotted == "relay.host"
    assert by_name["IMIP_GATEWAY_LISTENERS_SMTP_PORT"].dotted == "listeners.smtp.port"
    assert by_name["IMIP_GATEWAY_USERS"].kind == "json"
    assert by_name["IMIP_GATEWAY_IMAP_ACCOUNTS"].kind == "json"
    assert by_name["IMIP_GATEWAY_LISTENERS_SMTP_AUTH_USERS"].kind == "json"
    assert by_name["IMIP_GATEWAY_GATEWAY_SIGNIFICANT_PROPERTIES"].kind == "list"


def _changed_value(path: tuple[str, ...], default: Any) -> tuple[str, Any]:
    """An environment string different from ``default`` and the value it must give."""
    special: dict[str, tuple[str, Any]] = {
        "url": ("sqlite:///elsewhere.sqlite3", "sqlite:///elsewhere.sqlite3"),
        "from_address": ("bounce@example.org", "bounce@example.org"),
        "state_dir": ("/srv/gw", "/srv/gw"),
        "level": ("debug", "DEBUG"),
        "format": ("json", "json"),
        "tls": ("starttls", "starttls"),
        "max_message_bytes": ("4096", 4096),
    }
    if path[-1] in special:
        return special[path[-1]]
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return "changed.example.org", "changed.example.org"


_PAIRED = ("tls_cert", "tls_key", "require_tls", "username", "password")


def test_every_scalar_env_binding_reaches_its_key() -> None:
    defaults = load_config(None, {}).masked()
    checked = 0
    for binding in env_bindings():
        if binding.kind != "scalar" or binding.path[-1] in _PAIRED:
            continue  # keys only valid together are covered by their own tests
        default: Any = defaults
        for part in binding.path:
            default = default[part]
        raw, expected = _changed_value(binding.path, default)
        assert expected != default, binding.name
        effective: Any = load_config(None, {binding.name: raw}).masked()
        for part in binding.path:
            effective = effective[part]
        assert effective == expected, binding.name
        checked += 1
    assert checked > 30


def test_unknown_environment_variable_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"IMIP_GATEWAY_DATABSE_URL": "sqlite:///x"})
    assert "IMIP_GATEWAY_DATABSE_URL" in str(err.value)
    assert "unknown setting" in str(err.value)


# -------------------------------------------------------------------------- errors


def test_unknown_key_in_file_names_file_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "[listeners.smtp]\nprot = 25\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert str(err.value) == f"{path}: listeners.smtp.prot: unknown key"


def test_unknown_section_in_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[databse]\nurl = 'sqlite:///x'\n")
    with pytest.raises(ConfigError, match=r"databse: unknown key"):
        load_config(path, {})


def test_wrong_type_names_file_key_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, '[relay]\nport = "twenty-five"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    message = str(err.value)
    assert message.startswith(f"{path}: relay.port: ")
    assert "integer" in message


def test_error_inside_a_list_section_names_the_index(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "ok@example.org"\n[[users]]\naddress = "not an address"\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert f"{path}: users[1].address: " in str(err.value)
    assert "not a mail address" in str(err.value)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nhost = \n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert str(err.value).startswith(f"{path}: invalid TOML: ")
    assert "line 2" in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml", {})


def test_bad_environment_value_names_the_variable_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[relay]\nport = 2525\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {"IMIP_GATEWAY_RELAY_PORT": "many"})
    assert str(err.value).startswith("environment variable IMIP_GATEWAY_RELAY_PORT: relay.port: ")


def test_table_level_error_caused_by_environment_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[listeners.smtp]\nport = 2525\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, {"IMIP_GATEWAY_LISTENERS_SMTP_REQUIRE_TLS": "true"})
    assert str(err.value) == (
        f"{path} with environment variable IMIP_GATEWAY_LISTENERS_SMTP_REQUIRE_TLS:"
        " listeners.smtp: require_tls needs tls_cert and tls_key"
    )


def test_bad_json_in_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"IMIP_GATEWAY_USERS": "[{address: x}]"})
    assert "IMIP_GATEWAY_USERS" in str(err.value)
    assert "invalid JSON" in str(err.value)


def test_error_in_json_environment_names_variable_and_index() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, {"IMIP_GATEWAY_USERS": '[{"address": "a@example.org", "kind": "cat"}]'})
    assert str(err.value).startswith("environment variable IMIP_GATEWAY_USERS: users[0].kind: ")


@pytest.mark.parametrize(
    ("toml", "reason"),
    [
        ('[listeners.smtp]\ntls_cert = "c.pem"\n', "tls_cert and tls_key must be set together"),
        ("[listeners.lmtp]\nrequire_tls = true\n", "require_tls needs tls_cert and tls_key"),
        ('[relay]\nusername = "u"\n', "username and password must be set together"),
        ('[relay]\ntls = "ssl"\n', "relay.tls"),
        ('[database]\nurl = "mysql://x/y"\n', "database.url"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ("[gateway]\nmax_attendees = 0\n", "gateway.max_attendees"),
        ('[gateway]\nsignificant_properties = ["DTSTART", "not a name"]\n', "not an iCalendar"),
    ],
)
def test_invalid_values_are_rejected_with_a_reason(tmp_path: Path, toml: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        load_config(write(tmp_path, toml), {})


def test_an_address_used_twice_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "alice@example.org"\n'
        '[[users]]\naddress = "bob@example.org"\naliases = ["MAILTO:Alice@Example.ORG"]\n',
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, {})
    assert str(err.value) == (
        f"{path}: users: address 'alice@example.org' is used twice"
        " (users 'alice@example.org' and 'bob@example.org')"
    )


def test_imap_recipient_must_be_a_local_user(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "alice@example.org"\n'
        '[[imap.accounts]]\nname = "a"\nhost = "imap"\nusername = "a"\n'
        'recipient = "bob@example.org"\n',
    )
    with pytest.raises(ConfigError, match=r"'bob@example\.org' is not a configured user"):
        load_config(path, {})


def test_imap_account_names_are_unique(tmp_path: Path) -> None:
    account = 'name = "a"\nhost = "imap"\nusername = "a"\nrecipient = "alice@example.org"\n'
    path = write(
        tmp_path,
        '[[users]]\naddress = "alice@example.org"\n'
        f"[[imap.accounts]]\n{account}[[imap.accounts]]\n{account}",
    )
    with pytest.raises(ConfigError, match="account name 'a' is used twice"):
        load_config(path, {})


# ------------------------------------------------------------------------- users


def test_users_are_normalised_and_found_by_address_or_alias(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "MAILTO:Alice@Example.ORG"\naliases = ["<A.Smith@example.org>"]\n'
        '[[users]]\naddress = "room-1@example.org"\nkind = "room"\n',
    )
    settings = load_config(path, {})
    alice = settings.users[0]
    assert alice.address == "alice@example.org"
    assert settings.local_user("mailto:A.SMITH@example.org") is alice
    assert settings.local_user("Alice@example.org") is alice
    room = settings.local_user("room-1@example.org")
    assert room is not None
    assert room.kind == "room"
    assert settings.local_user("mallory@example.org") is None


def test_policy_default_depends_on_kind(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "p@example.org"\n'
        '[[users]]\naddress = "r@example.org"\nkind = "room"\n'
        '[[users]]\naddress = "x@example.org"\nkind = "resource"\npolicy = "manual"\n',
    )
    policies = [u.policy for u in load_config(path, {}).users]
    assert policies == ["manual", "accept-if-free", "manual"]


def test_booking_allowed_organizers_accept_addresses_and_domains(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[users]]\naddress = "r@example.org"\nkind = "room"\n'
        '[users.booking]\nallowed_organizers = ["Boss@Example.org", "@Example.NET"]\n',
    )
    booking = load_config(path, {}).users[0].booking
    assert booking.allowed_organizers == ["boss@example.org", "@example.net"]
    assert booking.window_days == 180


# ------------------------------------------------------------------------ masking


def test_masked_hides_every_secret_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\nurl = "postgresql+psycopg://gw:db-s3cret@db.internal:5432/gw"\n'
        '[listeners.smtp]\nauth_users = { postfix = "smtp-s3cret" }\n'
        '[relay]\nusername = "gw"\npassword = "relay-s3cret"\n'
        '[[users]]\naddress = "alice@example.org"\n'
        '[[imap.accounts]]\nname = "a"\nhost = "imap"\nusername = "alice"\n'
        'password = "imap-s3cret"\nrecipient = "alice@example.org"\n',
    )
    settings = load_config(path, {})
    masked = settings.masked()
    text = json.dumps(masked)
    assert "s3cret" not in text
    assert masked["database"]["url"] == "postgresql+psycopg://gw:***@db.internal:5432/gw"
    assert masked["listeners"]["smtp"]["auth_users"] == {"postfix": "***"}
    assert masked["relay"]["password"] == "***"
    assert masked["relay"]["username"] == "gw"
    assert masked["imap"]["accounts"][0]["password"] == "***"
    # The settings themselves keep the real values.
    assert settings.relay.password == "relay-s3cret"
    assert "relay-s3cret" not in repr(settings.relay)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://gw:pw@db/gw", "postgresql+psycopg://gw:***@db/gw"),
        ("postgresql://gw:p@ss:w@db:5432/gw", "postgresql://gw:***@db:5432/gw"),
        ("postgresql+psycopg://gw@db/gw", "postgresql+psycopg://gw@db/gw"),
        ("sqlite:////srv/x.sqlite3", "sqlite:////srv/x.sqlite3"),
    ],
)
def test_database_url_password_is_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_masked_leaves_empty_secrets_empty() -> None:
    masked = load_config(None, {}).masked()
    assert masked["relay"]["password"] == ""
    assert masked["database"]["url"] == "sqlite:///var/imip-gateway.sqlite3"


# ------------------------------------------------------------------ shipped files


def _uncommented_example() -> str:
    # "#: key = value" lines are optional keys documented with an example value.
    return "\n".join(
        line[3:] if line.startswith("#: ") else line
        for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
    )


def _keys_present(model: type[BaseModel], data: Any, path: str = "") -> set[str]:
    present: set[str] = set()
    items = data if isinstance(data, list) else [data]
    for item in items:
        for name, field in model.model_fields.items():
            if name not in item:
                continue
            dotted = f"{path}.{name}" if path else name
            present.add(dotted)
            annotation = field.annotation
            origin_args = typing.get_args(annotation)
            inner = origin_args[0] if typing.get_origin(annotation) is list else annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                present |= _keys_present(inner, item[name], dotted)
    return present


def _schema_keys(model: type[BaseModel], path: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        keys.add(dotted)
        annotation = field.annotation
        args = typing.get_args(annotation)
        inner = args[0] if typing.get_origin(annotation) is list else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            keys |= _schema_keys(inner, dotted)
    return keys


def test_example_config_loads_as_shipped() -> None:
    settings = load_config(EXAMPLE, {})
    assert settings.database.url == Settings().database.url
    assert settings.imap.accounts == []


def test_example_config_documents_every_key_with_a_valid_value() -> None:
    text = _uncommented_example()
    settings = Settings.model_validate(tomllib.loads(text))
    assert settings.imap.accounts[0].name == "alice"
    missing = _schema_keys(Settings) - _keys_present(Settings, tomllib.loads(text))
    assert not missing, f"config/gateway.example.toml does not document: {sorted(missing)}"


def test_example_config_values_are_the_defaults() -> None:
    # The scalar keys of single sections must show the default, not a sample value.
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    defaults = Settings().masked()
    for section in ("database", "relay", "identity", "logging"):
        for key, value in data[section].items():
            if key == "from_address":
                continue  # "" = derived from the hostname
            assert defaults[section][key] == value, f"{section}.{key}"
    for name in ("smtp", "lmtp"):
        for key, value in data["listeners"][name].items():
            assert defaults["listeners"][name][key] == value, f"listeners.{name}.{key}"
    for key, value in data["gateway"].items():
        if key != "hostname":
            assert defaults["gateway"][key] == value, f"gateway.{key}"


def test_dev_config_runs_smtp_on_loopback_with_one_user() -> None:
    settings = load_config(DEV, {})
    assert settings.listeners.smtp.enabled
    assert (settings.listeners.smtp.host, settings.listeners.smtp.port) == ("127.0.0.1", 10025)
    assert len(settings.users) == 1
    assert settings.database.is_sqlite
