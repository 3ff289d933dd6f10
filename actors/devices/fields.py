"""A reading's fields: how each is checked into a stored value, what its column is, and what the
protocol's JSON Schema says of it. A device type lists its fields (devices/definition.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson
from peewee import DoubleField, Field, TextField

from actors.protocol.sitetime import UNZONED, SiteTime

MAX_TEXT = 128  # device_id and text fields (a user id)
MAX_NUMBER = 1e9  # no sensor's: a bound that keeps summaries exact (sums of millionths, see devices/kinds.py)


class InvalidMessage(ValueError):
    """A payload that cannot be accepted; str() is the specific reason."""


def parse_object(payload: bytes) -> dict:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"expected a JSON object, got {json_kind(value)}")
    return value


def text_field(obj: dict, name: str) -> str:
    value = _required(obj, name)
    if not isinstance(value, str):
        raise InvalidMessage(f"field {name!r} must be a string, got {json_kind(value)}")
    if not value.strip():
        raise InvalidMessage(f"field {name!r} must not be empty")
    if len(value) > MAX_TEXT:
        raise InvalidMessage(f"field {name!r} is longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidMessage(f"field {name!r} contains control characters")
    return value


def number_field(obj: dict, name: str, low: float, high: float) -> float:
    value = _required(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(f"field {name!r} must be a number, got {json_kind(value)}")
    number = float(value)  # orjson has already refused numbers beyond a double's range
    if not low <= number <= high:
        raise InvalidMessage(f"field {name!r} must be between {low:g} and {high:g}, got {value!r}")
    return number


def choice_field(obj: dict, name: str, choices: tuple[str, ...]) -> str:
    value = _required(obj, name)
    if value not in choices:
        raise InvalidMessage(f"field {name!r} must be one of {', '.join(choices)}, got {value!r}")
    return value


def timestamp_field(obj: dict, site: SiteTime = UNZONED) -> tuple[str, str]:
    """An ISO 8601 date-time, in canonical form (`T` separator, offset as +HH:MM if given),
    and its date in the site's calendar. Canonical text sorts in time order within one offset."""
    value = _required(obj, "timestamp")
    if not isinstance(value, str):
        raise InvalidMessage(f"field 'timestamp' must be a string, got {json_kind(value)}")
    try:
        if len(value) < 16 or value[10] not in "Tt ":
            raise ValueError
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(
            f"field 'timestamp' must be an ISO 8601 date-time like 2026-01-22T14:30:00, got {value!r}"
        ) from None
    return moment.isoformat(), site.date_of(moment)


def _required(obj: dict, name: str):
    if name not in obj:
        raise InvalidMessage(f"missing field {name!r}")
    return obj[name]


def json_kind(value) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class Number:
    """A number between `low` and `high` (both included), stored as a double."""
    name: str  # in readings and reply records
    low: float = -MAX_NUMBER
    high: float = MAX_NUMBER
    column: str = ""  # the table's column; "": the name

    def __post_init__(self):
        assert -MAX_NUMBER <= self.low < self.high <= MAX_NUMBER, f"{self.name}: bounds within ±{MAX_NUMBER:g}"

    def read(self, obj: dict) -> float:
        return number_field(obj, self.name, self.low, self.high)

    def field(self) -> Field:
        """Its column's peewee field."""
        return DoubleField()  # 8 bytes everywhere (PostgreSQL's REAL would be 4)

    def schema(self) -> dict:
        return {"type": "number", "minimum": self.low, "maximum": self.high}

    def example(self, n: int) -> float:
        """A value that varies with n, for simulated devices and tests: within 0-100 where the
        bounds allow (a sensor's everyday values), a tenth apart."""
        low = max(self.low, min(0.0, self.high - 100))
        return round(low + (n * 7.3) % (min(self.high, low + 100) - low), 1)


@dataclass(frozen=True)
class Choice:
    """One of a few words, stored as text."""
    name: str
    choices: tuple[str, ...]
    column: str = ""

    def read(self, obj: dict) -> str:
        return choice_field(obj, self.name, self.choices)

    def field(self) -> Field:
        return TextField()

    def schema(self) -> dict:
        return {"type": "string", "enum": list(self.choices)}

    def example(self, n: int) -> str:
        return self.choices[n % len(self.choices)]


@dataclass(frozen=True)
class Text:
    """Free text up to MAX_TEXT characters, no control characters, not blank (a user id)."""
    name: str
    column: str = ""

    def read(self, obj: dict) -> str:
        return text_field(obj, self.name)

    def field(self) -> Field:
        return TextField()

    def schema(self) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": "^[^\\x00-\\x1f]*\\S[^\\x00-\\x1f]*$"}

    def example(self, n: int) -> str:
        return f"user_{n % 1000:03d}"


def column_of(f: Number | Choice | Text) -> str:
    return f.column or f.name
