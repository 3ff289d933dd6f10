"""Settings: the defaults in settings.toml, an optional --config file over them, then the
environment over both. Every value is typed and checked here, so a typo stops start-up
with a message naming the key instead of surfacing hours later."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULTS_FILE = Path(__file__).resolve().parent.parent / "settings.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(Exception):
    """A setting is unknown, missing or has a bad value; the message names it."""


def _check(minimum=None, maximum=None, choices=None, nonempty=False):
    return {"minimum": minimum, "maximum": maximum, "choices": choices, "nonempty": nonempty}


@dataclass(frozen=True)
class MqttSettings:
    host: str = field(metadata=_check(nonempty=True))
    port: int = field(metadata=_check(0, 65535))  # 0: 1883, or 8883 with TLS (resolved on loading)
    client_id: str = field(metadata=_check(nonempty=True))
    username: str = field(metadata=_check())
    password: str = field(metadata=_check(), repr=False)
    tls: bool = field(metadata=_check())
    tls_ca_file: str = field(metadata=_check())
    tls_cert_file: str = field(metadata=_check())
    tls_key_file: str = field(metadata=_check())
    tls_insecure: bool = field(metadata=_check())
    keepalive: int = field(metadata=_check(5, 3600))
    session_expiry: int = field(metadata=_check(3600, 0xFFFFFFFF))
    receive_maximum: int = field(metadata=_check(1, 65535))
    connect_timeout: float = field(metadata=_check(1, 300))
    reconnect_min_delay: float = field(metadata=_check(0.1, 3600))
    reconnect_max_delay: float = field(metadata=_check(0.1, 3600))
    drain_timeout: float = field(metadata=_check(0, 60))
    shared_group: str = field(metadata=_check())


@dataclass(frozen=True)
class DatabaseSettings:
    path: str = field(metadata=_check(nonempty=True))
    url: str = field(metadata=_check(), repr=False)  # postgresql://...; when set, wins over path
    busy_timeout: float = field(metadata=_check(0, 600))
    max_batch: int = field(metadata=_check(1, 100_000))
    commit_interval: float = field(metadata=_check(0, 1))
    retry_delay: float = field(metadata=_check(0.01, 60))
    max_size_mb: int = field(metadata=_check(0, 16 * 1024 * 1024))
    checkpoint_mb: int = field(metadata=_check(1, 4096))


@dataclass(frozen=True)
class QuerySettings:
    pool_size: int = field(metadata=_check(1, 64))
    max_reply_bytes: int = field(metadata=_check(1024, 256 * 1024 * 1024))
    max_page_records: int = field(metadata=_check(1, 1_000_000))


@dataclass(frozen=True)
class LimitsSettings:
    max_reading_bytes: int = field(metadata=_check(64, 16 * 1024 * 1024))
    max_request_bytes: int = field(metadata=_check(64, 16 * 1024 * 1024))
    max_failures: int = field(metadata=_check(1, 100))  # the delivery limit (see actors/mqtt/inflight.py)


@dataclass(frozen=True)
class AppsSettings:
    rate: float = field(metadata=_check(0, 10_000))  # requests/s per app on average; 0 = no limit
    burst: int = field(metadata=_check(1, 100_000))  # ... and at once
    readable: dict = field(metadata=_check())  # app-id glob -> device-id globs; empty = all


@dataclass(frozen=True)
class BackupSettings:
    dir: str = field(metadata=_check(nonempty=True))
    interval_hours: float = field(metadata=_check(0, 24 * 365))
    keep: int = field(metadata=_check(1, 10_000))


@dataclass(frozen=True)
class RetentionSettings:
    # days of readings each table keeps; 0 keeps everything (one key per device type, `{name}_days`)
    temperature_days: int = field(metadata=_check(0, 100_000))
    power_days: int = field(metadata=_check(0, 100_000))
    fingerprint_days: int = field(metadata=_check(0, 100_000))
    rejected_days: int = field(metadata=_check(0, 100_000))
    archive_dir: str = field(metadata=_check(nonempty=True))
    interval_hours: float = field(metadata=_check(0.01, 24 * 365))
    batch_rows: int = field(metadata=_check(1, 100_000))


@dataclass(frozen=True)
class StatusSettings:
    stats_interval: float = field(metadata=_check(1, 86400))
    log_interval: float = field(metadata=_check(1, 86400))


@dataclass(frozen=True)
class LoggingSettings:
    file: str = field(metadata=_check())
    level: str = field(metadata=_check(choices=LOG_LEVELS))
    max_bytes: int = field(metadata=_check(1024, 2**40))
    backups: int = field(metadata=_check(0, 100))


@dataclass(frozen=True)
class SupervisorSettings:
    max_restarts: int = field(metadata=_check(0, 1000))
    restart_window: float = field(metadata=_check(1, 86400))


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    database: DatabaseSettings
    queries: QuerySettings
    limits: LimitsSettings
    apps: AppsSettings
    backup: BackupSettings
    retention: RetentionSettings
    status: StatusSettings
    logging: LoggingSettings
    supervisor: SupervisorSettings


SECTIONS = {"mqtt": MqttSettings, "database": DatabaseSettings, "queries": QuerySettings,
            "limits": LimitsSettings, "apps": AppsSettings, "backup": BackupSettings, "retention": RetentionSettings,
            "status": StatusSettings, "logging": LoggingSettings, "supervisor": SupervisorSettings}

# The seed's environment variables and ours, each overriding one key.
ENVIRONMENT = {
    "MQTT_BROKER_HOST": ("mqtt", "host"),
    "MQTT_BROKER_PORT": ("mqtt", "port"),
    "MQTT_CLIENT_ID": ("mqtt", "client_id"),
    "MQTT_SHARED_GROUP": ("mqtt", "shared_group"),
    "MQTT_USERNAME": ("mqtt", "username"),
    "MQTT_PASSWORD": ("mqtt", "password"),
    "MQTT_TLS": ("mqtt", "tls"),
    "MQTT_TLS_CA_FILE": ("mqtt", "tls_ca_file"),
    "MQTT_TLS_CERT_FILE": ("mqtt", "tls_cert_file"),
    "MQTT_TLS_KEY_FILE": ("mqtt", "tls_key_file"),
    "DATABASE_PATH": ("database", "path"),
    "DATABASE_URL": ("database", "url"),
    "LOG_FILE": ("logging", "file"),
    "LOG_LEVEL": ("logging", "level"),
}


# Never in a settings file (which may be in a repository or readable by others).
SECRETS = {("mqtt", "password"): ("MQTT_PASSWORD", lambda value: True),
           ("database", "url"): ("DATABASE_URL", lambda value: describe_url(str(value)) != value)}


def load_settings(config_path: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Read the defaults, overlay `config_path` and the environment, and validate it all."""
    raw = _read_toml(DEFAULTS_FILE)
    if config_path is not None:
        _overlay(raw, _read_toml(Path(config_path)), str(config_path))
    environ = os.environ if environ is None else environ
    for variable, (section, key) in ENVIRONMENT.items():
        if variable in environ:
            raw[section][key] = _from_env(variable, environ[variable], _field_type(section, key))
    return _build(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from exc


def _field_type(section: str, key: str) -> str:
    return {f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[key]


def _unknown(kind: str, name: str, known) -> SettingsError:
    hint = difflib.get_close_matches(name, list(known), n=1)
    suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
    return SettingsError(f"unknown {kind} {name!r}{suffix}")


def _overlay(base: dict, extra: dict, source: str) -> None:
    sections = SECTIONS
    for section, values in extra.items():
        if section not in sections:
            raise _unknown(f"section in {source}:", section, sections)
        if not isinstance(values, dict):
            raise SettingsError(f"[{section}] in {source} must be a table")
        known = {f.name for f in dataclasses.fields(sections[section])}
        for key, value in values.items():
            if key not in known:
                raise _unknown(f"setting in {source}:", f"{section}.{key}",
                               [f"{section}.{k}" for k in known])
            if (section, key) in SECRETS and value and SECRETS[section, key][1](value):
                raise SettingsError(f"{section}.{key} in {source}: secrets come from the environment "
                                    f"only ({SECRETS[section, key][0]}, e.g. in /etc/mqtt-client/mqtt-client.env)")
            base[section][key] = value


def _from_env(variable: str, text: str, kind: str) -> Any:
    if kind == "bool":
        if text.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if text.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{variable}={text!r}: expected true or false")
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise SettingsError(f"{variable}={text!r}: expected a whole number") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise SettingsError(f"{variable}={text!r}: expected a number") from None
    return text


def _build(raw: dict) -> Settings:
    sections = SECTIONS
    for section in raw:
        if section not in sections:
            raise _unknown("section", section, sections)
    built = {}
    for section, cls in sections.items():
        values = raw.get(section)
        if not isinstance(values, dict):
            raise SettingsError(f"section [{section}] is missing from the settings")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in values:
            if key not in fields:
                raise _unknown("setting", f"{section}.{key}", [f"{section}.{k}" for k in fields])
        kwargs = {}
        for name, f in fields.items():
            if name not in values:
                raise SettingsError(f"setting {section}.{name} is missing")
            kwargs[name] = _validate(f"{section}.{name}", values[name], f)
        built[section] = cls(**kwargs)
    mqtt = built["mqtt"]
    if mqtt.reconnect_min_delay > mqtt.reconnect_max_delay:
        raise SettingsError("mqtt.reconnect_min_delay must not exceed mqtt.reconnect_max_delay")
    if any(c in mqtt.shared_group for c in "/+#$ "):
        raise SettingsError(f"mqtt.shared_group must be a plain name (no / + # $ or spaces), not {mqtt.shared_group!r}")
    if bool(mqtt.tls_cert_file) != bool(mqtt.tls_key_file):
        raise SettingsError("mqtt.tls_cert_file and mqtt.tls_key_file go together: set both or neither")
    if (mqtt.tls_ca_file or mqtt.tls_cert_file or mqtt.tls_insecure) and not mqtt.tls:
        raise SettingsError("mqtt.tls_* settings are set but mqtt.tls is false (MQTT_TLS)")
    url = built["database"].url
    if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        raise SettingsError("database.url (DATABASE_URL) must start with postgresql:// (or sqlite:///), "
                            f"not {describe_url(url)!r}")
    if url.startswith("sqlite:///"):  # the same as DATABASE_PATH
        built["database"] = dataclasses.replace(built["database"], path=url[len("sqlite:///"):], url="")
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(mqtt, name)
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"mqtt.{name}: cannot read {path}")
    if not mqtt.port:
        built["mqtt"] = dataclasses.replace(mqtt, port=8883 if mqtt.tls else 1883)
    return Settings(**built)


def describe_url(url: str) -> str:
    """A database URL fit for a log line: its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def _validate(name: str, value: Any, f: dataclasses.Field) -> Any:
    kind = f.type  # a string, thanks to `from __future__ import annotations`
    check = f.metadata
    if kind == "bool":
        if not isinstance(value, bool):
            raise SettingsError(f"{name} must be true or false, not {value!r}")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{name} must be a whole number, not {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{name} must be a number, not {value!r}")
        value = float(value)
        if not math.isfinite(value):  # nan passes every comparison; inf would disable a limit
            raise SettingsError(f"{name} must be a finite number, not {value!r}")
    elif kind == "dict":  # a table of glob -> list of globs
        if not isinstance(value, dict) or not all(
                isinstance(v, list) and all(isinstance(g, str) and g for g in v) for v in value.values()):
            raise SettingsError(f"{name} must be a table like {{ \"app-*\" = [\"sensor-*\"] }}, not {value!r}")
        return {key: tuple(globs) for key, globs in value.items()}
    elif not isinstance(value, str):
        raise SettingsError(f"{name} must be a string, not {value!r}")
    if check["nonempty"] and not value.strip():
        raise SettingsError(f"{name} must not be empty")
    if check["choices"] and value.upper() not in check["choices"]:
        raise SettingsError(f"{name} must be one of {', '.join(check['choices'])}, not {value!r}")
    if check["choices"]:
        value = value.upper()
    if check["minimum"] is not None and value < check["minimum"]:
        raise SettingsError(f"{name} must be at least {check['minimum']}, not {value!r}")
    if check["maximum"] is not None and value > check["maximum"]:
        raise SettingsError(f"{name} must be at most {check['maximum']}, not {value!r}")
    return value
