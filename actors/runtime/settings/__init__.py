"""Settings: the defaults in settings.toml, an optional --config file over them, then the
environment over both. Every key has a type (values.py) that checks it, so a typo stops start-up
with a message naming the key instead of surfacing hours later; every problem is reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, get_type_hints

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.runtime.settings.values import (
    Boolean,
    Date,
    Deprecated,
    Float,
    GlobTable,
    Integer,
    Invalid,
    ListenAddress,
    Port,
    SecondsOrAuto,
    Secret,
    String,
    TimeZone,
    Value,
    setting,
    split_address,
    value_of,
)

DEFAULTS_FILE = Path(__file__).resolve().parent.parent.parent.parent / "settings.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DAYS = Integer(0, 100_000)


class SettingsError(Exception):
    """Settings are unknown, missing or have bad values; the message names each one."""


def describe_url(url: str) -> str:
    """A database URL fit for a log line: its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


@dataclass(frozen=True)
class MqttSettings:
    host: str = setting(String(env="MQTT_BROKER_HOST", nonempty=True))
    port: int = setting(Port(env="MQTT_BROKER_PORT"))  # 0: 1883, or 8883 with TLS (resolved on loading)
    client_id: str = setting(String(env="MQTT_CLIENT_ID", nonempty=True))
    username: str = setting(String(env="MQTT_USERNAME"))
    password: str = setting(Secret(env="MQTT_PASSWORD"))
    tls: bool = setting(Boolean(env="MQTT_TLS"))
    tls_ca_file: str = setting(String(env="MQTT_TLS_CA_FILE"))
    tls_cert_file: str = setting(String(env="MQTT_TLS_CERT_FILE"))
    tls_key_file: str = setting(String(env="MQTT_TLS_KEY_FILE"))
    tls_insecure: bool = setting(Boolean())
    keepalive: int = setting(Integer(5, 3600))
    session_expiry: int = setting(Integer(3600, 0xFFFFFFFF))
    receive_maximum: int = setting(Integer(1, 65535))
    connect_timeout: float = setting(Float(1, 300))
    reconnect_min_delay: float = setting(Float(0.1, 3600))
    reconnect_max_delay: float = setting(Float(0.1, 3600))
    drain_timeout: float = setting(Float(0, 60))
    max_inflight_publishes: int = setting(Integer(1, 65535))
    shared_group: str = setting(String(env="MQTT_SHARED_GROUP"))


@dataclass(frozen=True)
class DatabaseSettings:
    path: str = setting(String(env="DATABASE_PATH", nonempty=True))
    # postgresql://...; when set, wins over path. A URL without a password may be in a file.
    url: str = setting(Secret(env="DATABASE_URL", in_file_ok=lambda url: describe_url(url) == url))
    busy_timeout: float = setting(Float(0, 600))
    max_batch: int = setting(Integer(1, 100_000))
    commit_linger: float = setting(Float(0, 5))
    retry_delay: float = setting(Float(0.01, 60))
    max_size_mb: int = setting(Integer(0, 16 * 1024 * 1024))
    checkpoint_mb: int = setting(Integer(1, 4096))
    commit_interval: ClassVar = Deprecated("commit_linger", since="1.2.0")


@dataclass(frozen=True)
class QuerySettings:
    pool_size: int = setting(Integer(1, 64))
    max_reply_bytes: int = setting(Integer(1024, 256 * 1024 * 1024))
    max_page_records: int = setting(Integer(1, 1_000_000))
    max_summary_buckets: int = setting(Integer(1, 1_000_000))  # buckets one summary may span


@dataclass(frozen=True)
class LimitsSettings:
    max_reading_bytes: int = setting(Integer(64, 16 * 1024 * 1024))
    max_request_bytes: int = setting(Integer(64, 16 * 1024 * 1024))
    max_failures: int = setting(Integer(1, 100))  # the delivery limit (see actors/mqtt/limit.py)
    earliest_date: str = setting(Date())  # readings dated before it: a clock that was reset
    max_clock_ahead: float = setting(Float(0, 10 * 365 * 86400))  # seconds ahead of arrival; 0: no check


@dataclass(frozen=True)
class DevicesSettings:
    min_stale_after: float = setting(Float(0, 10 * 365 * 86400))  # the least "auto" waits
    max_known: int = setting(Integer(1, 10_000_000))  # devices watched for liveness; the rest are stored, not watched
    # `{type}_stale_after` of each device type (PER_TYPE): seconds of silence after which a device is
    # stale; 0 = no liveness for the type; "auto" = three times the device's usual interval
    by_type: dict = dataclasses.field(default_factory=dict)

    def stale_after(self, device_type: str) -> float | str:
        return self.by_type[device_type]


@dataclass(frozen=True)
class SiteSettings:
    timezone: str = setting(TimeZone(env="SITE_TIMEZONE"))  # "": timestamps read as the devices wrote them


@dataclass(frozen=True)
class AppsSettings:
    rate: float = setting(Float(0, 10_000))  # requests/s per app on average; 0 = no limit
    burst: int = setting(Integer(1, 100_000))  # ... and at once
    readable: dict = setting(GlobTable())  # app-id glob -> device-id globs; empty = all


@dataclass(frozen=True)
class BackupSettings:
    dir: str = setting(String(nonempty=True))
    interval_hours: float = setting(Float(0, 24 * 365))
    keep: int = setting(Integer(1, 10_000))


@dataclass(frozen=True)
class RetentionSettings:
    rejected_days: int = setting(DAYS)
    summary_days: int = setting(DAYS)  # days the hourly summaries keep (counted like the rest); 0: for ever
    archive_dir: str = setting(String(nonempty=True))
    interval_hours: float = setting(Float(0.01, 24 * 365))
    batch_rows: int = setting(Integer(1, 100_000))
    # `{type}_days` of each device type (PER_TYPE): days of readings its table keeps; 0 keeps everything
    by_type: dict = dataclasses.field(default_factory=dict)

    def days(self, device_type: str) -> int:
        return self.by_type[device_type]


@dataclass(frozen=True)
class StatusSettings:
    stats_interval: float = setting(Float(1, 86400))
    log_interval: float = setting(Float(1, 86400))


@dataclass(frozen=True)
class LoggingSettings:
    file: str = setting(String(env="LOG_FILE"))
    level: str = setting(String(env="LOG_LEVEL", choices=LOG_LEVELS))
    max_bytes: int = setting(Integer(1024, 2**40))
    backups: int = setting(Integer(0, 100))


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = setting(ListenAddress(env="METRICS_LISTEN"))  # host:port of /metrics, /healthz, /readyz; "": off
    allow_remote: bool = setting(Boolean())  # listen on an address other machines reach (else refused)


@dataclass(frozen=True)
class SupervisorSettings:
    max_restarts: int = setting(Integer(0, 1000))
    restart_window: float = setting(Float(1, 86400))


@dataclass(frozen=True)
class Settings:
    mqtt: MqttSettings
    database: DatabaseSettings
    queries: QuerySettings
    limits: LimitsSettings
    devices: DevicesSettings
    site: SiteSettings
    apps: AppsSettings
    backup: BackupSettings
    retention: RetentionSettings
    status: StatusSettings
    logging: LoggingSettings
    metrics: MetricsSettings
    supervisor: SupervisorSettings
    # What start-up should warn about (a deprecated key in use), once logging is set up.
    warnings: tuple[str, ...] = dataclasses.field(default=(), compare=False)
    types: DeviceTypes = dataclasses.field(default_factory=lambda: BUILTIN_TYPES, compare=False)  # whose *_days etc.


SECTIONS = {name: kind for name, kind in get_type_hints(Settings).items() if name not in ("warnings", "types")}
# Keys a section has for each device type, `{type}_{suffix}`: their value, and their default when the
# settings do not name the type (one a site added: settings.toml names the contract's three).
PER_TYPE = {"devices": ("stale_after", SecondsOrAuto(0, 10 * 365 * 86400), lambda d: d.stale_after),
            "retention": ("days", DAYS, lambda d: 0)}


def keys(section: str, types: DeviceTypes = BUILTIN_TYPES) -> dict[str, Value]:
    known = {f.name: value_of(f) for f in dataclasses.fields(SECTIONS[section]) if f.name != "by_type"}
    if section in PER_TYPE:
        suffix, value, _ = PER_TYPE[section]
        known |= {f"{name}_{suffix}": value for name in types}
    return known


def deprecated(section: str) -> dict[str, Deprecated]:
    return {name: v for name, v in vars(SECTIONS[section]).items() if isinstance(v, Deprecated)}


# Each environment variable overrides one key (the seed's and ours), named beside it above.
ENVIRONMENT = {value.env: (section, key) for section in SECTIONS for key, value in keys(section).items()
               if value.env}


def load_settings(config_path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                  types: DeviceTypes = BUILTIN_TYPES) -> Settings:
    """Read the defaults, overlay `config_path` and the environment, and check it all, with the
    keys of the device types `types`: a SettingsError names every problem found."""
    loading = _Loading(types)
    raw = loading.read(DEFAULTS_FILE)
    if config_path is not None:
        loading.overlay(raw, loading.read(Path(config_path)), str(config_path))
    environ = os.environ if environ is None else environ
    for variable, (section, key) in ENVIRONMENT.items():
        # An empty variable is an unset one: `MQTT_USERNAME=` in an env file must not override
        # the settings file (systemd's EnvironmentFile cannot say "unset").
        if environ.get(variable, "") != "":
            try:
                raw[section][key] = keys(section)[key].parse(environ[variable])
            except Invalid as exc:
                loading.errors.append(f"{variable}={environ[variable]!r}: {exc}")
    built = loading.build(raw)
    if loading.errors:
        problems = loading.errors
        raise SettingsError(problems[0] if len(problems) == 1 else
                            f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems))
    return dataclasses.replace(_resolve(built), warnings=tuple(loading.warnings), types=types)


class _Loading:
    """One load's raw values, and the problems and warnings found along the way."""

    def __init__(self, types: DeviceTypes):
        self.types = types
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def read(self, path: Path) -> dict[str, Any]:
        try:
            with open(path, "rb") as f:
                return tomllib.load(f)
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from exc

    def overlay(self, base: dict, extra: dict, source: str) -> None:
        for section, values in extra.items():
            if section not in SECTIONS:
                self.errors.append(_unknown(f"section in {source}:", section, SECTIONS))
                continue
            if not isinstance(values, dict):
                self.errors.append(f"[{section}] in {source} must be a table")
                continue
            known, old = keys(section, self.types), deprecated(section)
            for key, value in values.items():
                if key in old:
                    new = old[key].renamed_to
                    self.warnings.append(f"{section}.{key} in {source} was renamed {section}.{new} in version "
                                         f"{old[key].since}; it still works, but please rename it")
                    if new in values:
                        self.errors.append(f"{section}.{key} and {section}.{new} in {source}: "
                                           f"the same setting twice (keep {new})")
                    key = new
                if key not in known:
                    self.errors.append(_unknown(f"setting in {source}:", f"{section}.{key}",
                                                [f"{section}.{k}" for k in known]))
                elif known[key].secret and value and not known[key].in_file_ok(value):
                    self.errors.append(f"{section}.{key} in {source}: secrets come from the environment only "
                                       f"({known[key].env}, e.g. in /etc/mqtt-client/mqtt-client.env)")
                else:
                    base[section][key] = value

    def build(self, raw: dict) -> Settings | None:
        for section in raw:
            if section not in SECTIONS:
                self.errors.append(_unknown("section", section, SECTIONS))
        built = {}
        for section, cls in SECTIONS.items():
            values = raw.get(section)
            if not isinstance(values, dict):
                self.errors.append(f"section [{section}] is missing from the settings")
                continue
            known = keys(section, self.types)
            self.errors += [_unknown("setting", f"{section}.{key}", [f"{section}.{k}" for k in known])
                            for key in values if key not in known]
            checked = {}
            if section in PER_TYPE:  # a type the settings do not name has its definition's default
                suffix, _, default = PER_TYPE[section]
                values = {f"{n}_{suffix}": default(d) for n, d in self.types.items()} | values
            for key, value in known.items():
                if key not in values:
                    self.errors.append(f"setting {section}.{key} is missing")
                    continue
                try:
                    checked[key] = value.check(values[key])
                except Invalid as exc:
                    self.errors.append(f"{section}.{key} {exc}")
            if len(checked) == len(known):
                if section in PER_TYPE:
                    suffix = PER_TYPE[section][0]
                    checked["by_type"] = {n: checked.pop(f"{n}_{suffix}") for n in self.types}
                built[section] = cls(**checked)
        if len(built) < len(SECTIONS):
            return None
        settings = Settings(**built, types=self.types)
        self.errors += _together(settings)
        return settings


def _unknown(kind: str, name: str, known) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1)
    return f"unknown {kind} {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")


def _together(s: Settings) -> list[str]:
    """What is wrong with settings that are each fine on their own."""
    mqtt, url, problems = s.mqtt, s.database.url, []
    if mqtt.reconnect_min_delay > mqtt.reconnect_max_delay:
        problems.append("mqtt.reconnect_min_delay must not exceed mqtt.reconnect_max_delay")
    if any(c in mqtt.shared_group for c in "/+#$ "):
        problems.append(f"mqtt.shared_group must be a plain name (no / + # $ or spaces), not {mqtt.shared_group!r}")
    if bool(mqtt.tls_cert_file) != bool(mqtt.tls_key_file):
        problems.append("mqtt.tls_cert_file and mqtt.tls_key_file go together: set both or neither")
    if (mqtt.tls_ca_file or mqtt.tls_cert_file or mqtt.tls_insecure) and not mqtt.tls:
        problems.append("mqtt.tls_* settings are set but mqtt.tls is false (MQTT_TLS)")
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(mqtt, name)
        if path and not os.access(path, os.R_OK):
            problems.append(f"mqtt.{name}: cannot read {path}")
    days = [s.retention.days(name) for name in s.types]
    if s.retention.summary_days and any(d == 0 or d > s.retention.summary_days for d in days):
        problems.append(f"retention.summary_days ({s.retention.summary_days}) must be 0 (keep summaries for ever) "
                        "or at least every device table's *_days (a summary must outlive its readings)")
    if s.metrics.listen and not s.metrics.allow_remote and not is_loopback(split_address(s.metrics.listen)[0]):
        problems.append(f"metrics.listen ({s.metrics.listen}) is not an address of this machine only (127.0.0.1, "
                        "::1, localhost): set metrics.allow_remote = true to serve the metrics to other machines")
    if url and not url.startswith(("postgresql://", "postgres://", "sqlite:///")):
        problems.append("database.url (DATABASE_URL) must start with postgresql:// (or sqlite:///), "
                        f"not {describe_url(url)!r}")
    return problems


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve to anything
        return False


def _resolve(s: Settings) -> Settings:
    """Defaults that depend on other settings, and equivalent spellings made one."""
    if s.database.url.startswith("sqlite:///"):  # the same as DATABASE_PATH
        s = dataclasses.replace(s, database=dataclasses.replace(s.database, path=s.database.url[len("sqlite:///"):],
                                                                url=""))
    if not s.mqtt.port:
        s = dataclasses.replace(s, mqtt=dataclasses.replace(s.mqtt, port=8883 if s.mqtt.tls else 1883))
    return s
