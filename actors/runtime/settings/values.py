"""The types of settings, in the Mopidy way: each knows what it accepts from a settings file (a
TOML value) and from the environment (text), and says why it refuses the rest."""

from __future__ import annotations

import dataclasses
import math
from datetime import date
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Invalid(ValueError):
    """A value a setting refuses; the message says what it must be ("must be at least 1, not 0")."""


class Value:
    """A setting's type. `env`: the environment variable that overrides the key, if any."""

    secret = False

    def __init__(self, env: str | None = None):
        self.env = env

    def check(self, value: Any) -> Any:
        """The value from a file (or from `parse`), as the service uses it; Invalid if refused."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """The environment variable's text as the value a file would hold (check comes after)."""
        return text


class String(Value):
    def __init__(self, env: str | None = None, nonempty: bool = False, choices: tuple[str, ...] = ()):
        super().__init__(env)
        self.nonempty = nonempty
        self.choices = choices  # case-insensitive; the value becomes upper case

    def check(self, value):
        if not isinstance(value, str):
            raise Invalid(f"must be a string, not {value!r}")
        if self.nonempty and not value.strip():
            raise Invalid("must not be empty")
        if self.choices:
            if value.upper() not in self.choices:
                raise Invalid(f"must be one of {', '.join(self.choices)}, not {value!r}")
            return value.upper()
        return value


class Secret(String):
    """A password, or what holds one: never in a settings file (which may be in a repository or
    readable by others), never in a repr. `in_file_ok(value)`: a value that holds no secret (a
    database URL without a password) may be in a file after all."""

    secret = True

    def __init__(self, env: str, in_file_ok: Callable[[str], bool] = lambda value: False):
        super().__init__(env)
        self.in_file_ok = in_file_ok


class Boolean(Value):
    TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")

    def check(self, value):
        if not isinstance(value, bool):
            raise Invalid(f"must be true or false, not {value!r}")
        return value

    def parse(self, text):
        word = text.strip().lower()
        if word in self.TRUE or word in self.FALSE:
            return word in self.TRUE
        raise Invalid("expected true or false")


class Integer(Value):
    """A whole number within [minimum, maximum]: every one has both, so that a huge value is
    refused here instead of overflowing later (e.g. in a PRAGMA)."""

    def __init__(self, minimum: int, maximum: int, env: str | None = None):
        super().__init__(env)
        self.minimum, self.maximum = minimum, maximum

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be a whole number, not {value!r}")
        return self._within(value)

    def parse(self, text):
        try:
            return int(text)
        except ValueError:
            raise Invalid("expected a whole number") from None

    def _within(self, value):
        if value < self.minimum:
            raise Invalid(f"must be at least {self.minimum}, not {value!r}")
        if value > self.maximum:
            raise Invalid(f"must be at most {self.maximum}, not {value!r}")
        return value


class Port(Integer):
    """A TCP port; 0: the protocol's default (resolved where that is known)."""

    def __init__(self, env: str | None = None):
        super().__init__(0, 65535, env)


class Float(Integer):
    """A finite number within [minimum, maximum]: nan passes every comparison, and inf would
    disable a limit."""

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, not {value!r}")
        return self._within(float(value))

    def parse(self, text):
        try:
            number = float(text)
        except ValueError:
            raise Invalid("expected a number") from None
        if not math.isfinite(number):
            raise Invalid("expected a finite number")
        return number


class GlobTable(Value):
    """A table of glob -> list of globs, e.g. { "app-*" = ["sensor-*"] }."""

    def check(self, value):
        if not isinstance(value, dict) or not all(
                isinstance(v, list) and all(isinstance(g, str) and g for g in v) for v in value.values()):
            raise Invalid(f"must be a table like {{ \"app-*\" = [\"sensor-*\"] }}, not {value!r}")
        return {key: tuple(globs) for key, globs in value.items()}


class Date(String):
    """A calendar date as YYYY-MM-DD."""

    def check(self, value):
        value = super().check(value)
        try:
            if len(value) != 10:
                raise ValueError
            date.fromisoformat(value)
        except ValueError:
            raise Invalid(f"must be a date as YYYY-MM-DD, not {value!r}") from None
        return value


class TimeZone(String):
    """An IANA time zone name (Asia/Kolkata, Europe/London, UTC), or empty: none."""

    def check(self, value):
        value = super().check(value).strip()
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise Invalid(f"must be an IANA time zone name such as Asia/Kolkata or UTC, not {value!r}") from None
        return value


class ListenAddress(String):
    """host:port for a server of ours (an IP address or localhost; [::1]:port for IPv6), or empty: none."""

    def check(self, value):
        value = super().check(value).strip()
        if value:
            host, port = split_address(value)
            if port is None or not 1 <= port <= 65535 or not host:
                raise Invalid(f"must be host:port, such as 127.0.0.1:9108, not {value!r}")
        return value


def split_address(value: str) -> tuple[str, int | None]:
    """("127.0.0.1", 9108) of "127.0.0.1:9108" (an IPv6 host in brackets); port None if unreadable."""
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host, int(port) if port.isdigit() else None


class SecondsOrAuto(Float):
    """A number of seconds (0: off), or "auto": the service works it out."""

    def check(self, value):
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        if isinstance(value, str):
            raise Invalid(f'must be a number of seconds or "auto", not {value!r}')
        return super().check(value)

    def parse(self, text):
        return "auto" if text.strip().lower() == "auto" else super().parse(text)


@dataclasses.dataclass(frozen=True)
class Deprecated:
    """A key that was renamed: a settings file that still has it keeps working (its value goes
    to the new key) and start-up logs a warning, so that an upgrade never breaks a deployment."""

    renamed_to: str
    since: str  # the version that renamed it


def setting(value: Value) -> dataclasses.Field:
    """A field of a settings section, of type `value`."""
    return dataclasses.field(metadata={"value": value}, repr=not value.secret)


def value_of(f: dataclasses.Field) -> Value:
    return f.metadata["value"]
