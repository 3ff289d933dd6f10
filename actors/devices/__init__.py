"""The device types, each defined once: its topics, how a reading is validated into a row,
its table, and how stored rows become reply records. A fourth type is one more definition
in DEVICE_TYPES (and a model in models.py)."""

from __future__ import annotations

from datetime import datetime

import orjson
from peewee import Model, Select, Tuple, fn

from actors.storage.models import FingerprintLog, PowerStatusLog, TemperatureLog
from actors.protocol.sitetime import UNZONED, SiteTime

MAX_TEXT = 128  # device_id and user_id
MAX_TEMPERATURE = 1e9  # no sensor's: a bound that keeps summaries exact (see rollups.py)


class InvalidMessage(ValueError):
    """A payload that cannot be accepted; str() is the specific reason."""


def parse_object(payload: bytes) -> dict:
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"expected a JSON object, got {_json_kind(value)}")
    return value


def text_field(obj: dict, name: str) -> str:
    value = _required(obj, name)
    if not isinstance(value, str):
        raise InvalidMessage(f"field {name!r} must be a string, got {_json_kind(value)}")
    if not value.strip():
        raise InvalidMessage(f"field {name!r} must not be empty")
    if len(value) > MAX_TEXT:
        raise InvalidMessage(f"field {name!r} is longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidMessage(f"field {name!r} contains control characters")
    return value


def number_field(obj: dict, name: str, low: float | None = None, high: float | None = None) -> float:
    value = _required(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidMessage(f"field {name!r} must be a number, got {_json_kind(value)}")
    number = float(value)  # orjson has already refused numbers beyond a double's range
    if (low is not None and number < low) or (high is not None and number > high):
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
        raise InvalidMessage(f"field 'timestamp' must be a string, got {_json_kind(value)}")
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


def _json_kind(value) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             type(None): "null", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


class DeviceType:
    """One kind of device. Subclasses say how to validate a reading's own fields
    (`values`) and how a stored row reads in a reply (`record`)."""

    name: str
    reading_topic: str  # devices publish readings here
    request_stem: str  # apps ask on {request_stem}/{app_id} ...
    reply_stem: str  # ... and get the answer on {reply_stem}/{app_id}
    model: type[Model]
    value_columns: tuple[str, ...]  # the columns between device_id and timestamp
    reading_fields: tuple[str, ...]  # the reading's fields that values() turns into those columns
    carried: tuple[str, ...] = ()  # value columns whose latest state replies carry forward (see Power)

    def __init__(self):
        self._compiled: dict[tuple, tuple[str, list[int]]] = {}  # see _compile

    def parse(self, payload: bytes, site: SiteTime = UNZONED) -> tuple:
        """A reading's payload as a row (device_id, *values, timestamp, date); created_at is
        added by the writer. Raises InvalidMessage with the reason."""
        obj = parse_object(payload)
        device_id = text_field(obj, "device_id")
        values = self.values(obj)
        timestamp, date = timestamp_field(obj, site)
        return (device_id, *values, timestamp, date)

    def values(self, obj: dict) -> tuple:
        raise NotImplementedError

    def records(self, rows, state: tuple) -> list[dict]:
        """Stored rows (*value_columns, timestamp) as the records of a reply; `state`: what they
        carry forward from earlier rows (see Power). The one definition of a type's record: a
        comprehension, since a call per row cost a third more than the dicts themselves."""
        raise NotImplementedError

    blank: tuple = ()  # the state before anything was carried

    def record(self, row: tuple) -> dict:
        """A stored row as one record of a reply, as it is, carrying nothing."""
        return self.records((row,), self.blank)[0]

    def rows(self, device_id: str, date: str, after: tuple | None = None, start: str | None = None,
             end: str | None = None, limit: int | None = None) -> list[tuple]:
        """The device-day's rows (*value_columns, timestamp) in the index's own order: by time,
        then values. `after` is a row's key (see key()): only the rows past it (paging).
        `start` / `end` are times of day (HH:MM:SS), both included; `end` with its fractions
        and offsets. Rows come straight from the cursor, over twice as fast for a busy day
        (86,400 rows) as peewee making objects of them."""
        args = (device_id, date, f"{date}T{start}" if start else None, f"{date}T{end}\uffff" if end else None,
                limit, *(after or ()))
        shape = (bool(start), bool(end), bool(limit), len(after or ()))
        database = self.model._meta.database
        if (compiled := self._compiled.get((database.param, shape))) is None:  # SQLite's ? or PostgreSQL's %s
            compiled = self._compiled[database.param, shape] = self._compile(*shape)
        sql, order = compiled
        return list(database.execute_sql(sql, [args[i] for i in order]))

    def _compile(self, start: bool, end: bool, limit: bool, after: int) -> tuple[str, list[int]]:
        """The SQL of rows() for one shape of request, once (building it took a third of a reply's
        time), and which of rows()'s arguments each of its parameters is."""
        marks = [f"\0{i}" for i in range(5 + after)]  # stand-ins, told apart in the parameters
        marks[4] = 10**12 + 4  # the limit, a number
        m = self.model
        values = [getattr(m, c) for c in self.value_columns]
        where = (m.device_id == marks[0]) & (m.date == marks[1])
        if start:
            where &= m.timestamp >= marks[2]
        if end:
            where &= m.timestamp < marks[3]
        if after:
            where &= Tuple(m.timestamp, *values) > Tuple(*marks[5:])
        query = m.select(*values, m.timestamp).where(where).order_by(m.timestamp, *values)
        if limit:
            query = query.limit(marks[4])
        sql, params = query.sql()
        return sql, [marks.index(param) for param in params]

    def latest_row(self, device_id: str) -> tuple | None:
        """The device's most recent row, by its own date and time."""
        m = self.model
        values = [getattr(m, c) for c in self.value_columns]
        query = (m.select(*values, m.timestamp).where(m.device_id == device_id)
                 .order_by(m.date.desc(), m.timestamp.desc(), *(v.desc() for v in values)).limit(1))
        return next(iter(m._meta.database.execute(query)), None)

    def latest_record(self, latest: list, carried: tuple) -> dict:
        """The catalogue's latest row of a device (its values and timestamp, as stored) as a reply
        record; `carried`: the latest state of each column replies carry forward (see Power)."""
        return self.record(tuple(latest))

    @staticmethod
    def key(row: tuple) -> tuple:
        """A row's place in the index order: (timestamp, *values)."""
        return (row[-1], *row[:-1])

    def state_before(self, device_id: str, date: str, before: str | None) -> tuple:
        """What records carry forward from earlier rows (see Power); `before` is a timestamp
        of that day, None for its start."""
        return ()

    def state_after(self, record: dict) -> tuple:
        """The carried state once `record` is sent: where the next page starts from."""
        return ()

    def cursor_values(self, values: list) -> tuple:
        """A cursor's value columns as this type stores them; ValueError (InvalidMessage) if they
        are not values a row of this type can hold (a cursor an app made up, or one of another
        type). Checked by the reading's own field rules, where the row holds what was sent."""
        return self.values(dict(zip(self.reading_fields, values)))

    def cursor_state(self, state: list) -> tuple:
        """A cursor's carried state; ValueError if it is not one this type carries."""
        if state:
            raise ValueError
        return ()

    def kept_past_retention(self, cutoff: str) -> set[int]:
        """Ids of rows dated before `cutoff` that replies still need (see Power)."""
        return set()


class Temperature(DeviceType):
    name = "temperature"
    reading_topic = "home/temperature"
    request_stem = "home/gettemp"
    reply_stem = "home/datatemp"
    model = TemperatureLog
    value_columns = ("temperature", "humidity", "status")
    reading_fields = value_columns

    def values(self, obj):
        return (number_field(obj, "temperature", -MAX_TEMPERATURE, MAX_TEMPERATURE),
                number_field(obj, "humidity", 0, 100), choice_field(obj, "status", ("HIGH", "LOW")))

    def records(self, rows, state):
        return [{"temperature": temperature, "humidity": humidity, "status": status, "timestamp": timestamp}
                for temperature, humidity, status, timestamp in rows]


class Power(DeviceType):
    """A power event names one source (EB: the grid, DG: the generator). The row keeps what
    the device said; a reply record shows both sources' state after the event, carrying the
    other source's latest earlier value, so it is computed at query time in timestamp order
    and arrival order never matters."""
    name = "power"
    reading_topic = "home/power"
    request_stem = "home/getpower"
    reply_stem = "home/datapower"
    model = PowerStatusLog
    value_columns = ("ebstatus", "dgstatus")
    reading_fields = ("status",)  # one event names one source: see values()
    carried = value_columns
    STATUSES = {"EB_ON": ("ON", ""), "EB_OFF": ("OFF", ""), "DG_ON": ("", "ON"), "DG_OFF": ("", "OFF")}

    def values(self, obj):
        return self.STATUSES[choice_field(obj, "status", tuple(self.STATUSES))]

    blank = ("", "")

    def state_before(self, device_id, date, before):
        return tuple(self._latest_before(device_id, date, before, c) for c in ("ebstatus", "dgstatus"))

    def records(self, rows, state):
        eb, dg = state  # each source's state so far: an event of the other source leaves it as it was
        return [{"ebstatus": (eb := ebstatus or eb), "dgstatus": (dg := dgstatus or dg), "timestamp": timestamp}
                for ebstatus, dgstatus, timestamp in rows]

    def state_after(self, record):
        return record["ebstatus"], record["dgstatus"]

    def latest_record(self, latest, carried):
        *values, timestamp = latest
        return self.record((*(c or v for c, v in zip(carried, values)), timestamp))

    def cursor_values(self, values):
        obj = dict(zip(self.value_columns, values))  # the stored columns: ON, OFF or ""
        return tuple(choice_field(obj, c, ("ON", "OFF", "")) for c in self.value_columns)

    def cursor_state(self, state):
        if len(state) != 2:
            raise ValueError
        return self.cursor_values(state)

    def _latest_before(self, device_id: str, date: str, before: str | None, column: str) -> str:
        m = self.model
        field = getattr(m, column)
        earlier = m.date < date
        if before:
            earlier |= (m.date == date) & (m.timestamp < before)
        latest = (m.select(field)
                  .where((m.device_id == device_id) & earlier & (field != ""))
                  .order_by(m.date.desc(), m.timestamp.desc())
                  .limit(1).scalar())
        return latest or ""

    def kept_past_retention(self, cutoff):
        """Each device's latest event of each source before the cutoff: the state it set
        carries into the days that are kept."""
        m = self.model
        kept = set()
        for source in (m.ebstatus, m.dgstatus):
            newest_first = fn.ROW_NUMBER().over(partition_by=[m.device_id],
                                                order_by=[m.date.desc(), m.timestamp.desc(), m.id.desc()])
            ranked = m.select(m.id, newest_first.alias("n")).where((m.date < cutoff) & (source != "")).alias("r")
            latest = Select([ranked], [ranked.c.id]).where(ranked.c.n == 1)
            kept.update(row[0] for row in m._meta.database.execute(latest))
        return kept


class Fingerprint(DeviceType):
    name = "fingerprint"
    reading_topic = "home/fingerprint"
    request_stem = "home/getfingerprint"
    reply_stem = "home/datafingerprint"
    model = FingerprintLog
    value_columns = ("user_id", "auth_status")
    reading_fields = ("user_id", "authStatus")

    def values(self, obj):
        return text_field(obj, "user_id"), choice_field(obj, "authStatus", ("PASS", "FAIL"))

    def records(self, rows, state):
        return [{"user_id": user_id, "authStatus": auth_status, "timestamp": timestamp}
                for user_id, auth_status, timestamp in rows]


DEVICE_TYPES: dict[str, DeviceType] = {d.name: d for d in (Temperature(), Power(), Fingerprint())}
BY_READING_TOPIC: dict[str, DeviceType] = {d.reading_topic: d for d in DEVICE_TYPES.values()}
