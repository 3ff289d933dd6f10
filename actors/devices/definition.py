"""A device type, defined once: its topics, its reading's fields (devices/fields.py), its table,
the records replies carry, its summary composed of summary kinds (devices/kinds.py), its
liveness default and its settings keys. Everything else (ingest, writer, rollups, summaries,
catalogue, queries, retention, settings, the simulator, the tests' builders) reads the definition."""

from __future__ import annotations

import dataclasses

from peewee import AutoField, IntegerField, Model, ModelIndex, TextField, Tuple

from actors.devices.fields import (
    Choice,
    InvalidMessage,
    Number,
    Text,
    column_of,
    parse_object,
    text_field,
    timestamp_field,
)
from actors.devices.kinds import Columns, Distinct, Kind, OnTime
from actors.protocol.sitetime import UNZONED, SiteTime

__all__ = ["DeviceType", "InvalidMessage"]


class DeviceType:
    """One kind of device, declared by its arguments. A type whose records carry state from
    earlier readings (power) subclasses it and says how (see devices/power.py)."""

    def __init__(self, name: str, *, topic: str, request: str, reply: str, table: str,
                 fields: tuple[Number | Choice | Text, ...], summary: tuple[Kind, ...], hourly_table: str = "",
                 stale_after: float | str = 0, columns: dict | None = None):
        """`topic`: where devices publish readings; apps ask on `{request}/{app_id}` and are answered
        on `{reply}/{app_id}`; `stale_after`: the default of devices.{name}_stale_after (seconds of
        silence, "auto", or 0: no liveness); `columns`: the stored value columns when they are not
        the fields' own, each with what makes its peewee field (see power)."""
        self.name = name
        self.reading_topic, self.request_stem, self.reply_stem = topic, request, reply
        self.fields = fields
        self.stale_after = stale_after
        self.reading_fields = tuple(f.name for f in fields)  # the reading's fields that values() stores
        stored = columns or {column_of(f): f.field for f in fields}  # what makes each column's peewee field
        self.value_columns = tuple(stored)  # the columns between device_id and timestamp
        # what a record calls each value column: the reading's own name for it
        self.record_keys = {column_of(f): f.name for f in fields} if columns is None else {c: c for c in stored}
        self.model = _model(f"{name}_log", table, {
            "device_id": TextField, **stored, "timestamp": TextField, "date": TextField,
            "created_at": TextField})  # date: of `timestamp` in the site's calendar; created_at: UTC, committed
        _identity(self.model, self.value_columns)
        by_field = {f.name: column_of(f) for f in fields}
        self.summary = tuple(k if isinstance(k, OnTime) else dataclasses.replace(k, column=by_field[k.field])
                             for k in summary)
        assert not any(isinstance(k, OnTime) for k in summary) or len(summary) == 1, "OnTime is a whole summary"
        # the rollup keeps one row per device-hour, and per value of a Distinct field
        self.rollup_key = ("device_id", "hour", *(k.column for k in self.summary if isinstance(k, Distinct)))
        rollup_columns = {c: TextField for c in self.rollup_key}
        rollup_columns["readings"] = IntegerField
        for kind in self.summary:
            rollup_columns |= kind.columns()
        self.hourly = _model(f"{name}_hourly", hourly_table or f"{name}_hourly", rollup_columns,
                             indexes=((self.rollup_key, True),))
        self._compiled: dict[tuple, tuple[str, list[int]]] = {}  # see _compile
        self.records = self._records_function()

    def __repr__(self):
        return f"DeviceType({self.name!r})"

    def parse(self, payload: bytes, site: SiteTime = UNZONED) -> tuple:
        """A reading's payload as a row (device_id, *values, timestamp, date); created_at is
        added by the writer. Raises InvalidMessage with the reason."""
        obj = parse_object(payload)
        device_id = text_field(obj, "device_id")
        values = self.values(obj)
        timestamp, date = timestamp_field(obj, site)
        return (device_id, *values, timestamp, date)

    def values(self, obj: dict) -> tuple:
        """The reading's own fields as the value columns."""
        return tuple(f.read(obj) for f in self.fields)

    def _records_function(self):
        """records(rows, state): stored rows (*value_columns, timestamp) as the records of a reply,
        `state` being what they carry forward from earlier rows (see power). Made once from the
        definition, as dataclasses make their methods: a dict display per row cost a third less
        than dict(zip()) in a 1,440-record reply."""
        names = [f"v{i}" for i in range(len(self.value_columns))]
        record = ", ".join(f"{self.record_keys[c]!r}: {v}" for c, v in zip(self.value_columns, names))
        return eval(f"lambda rows, state: [{{{record}, 'timestamp': t}} for {', '.join(names)}, t in rows]")

    blank: tuple = ()  # the state before anything was carried
    carried: tuple[str, ...] = ()  # value columns whose latest state replies carry forward (see power)

    def record(self, row: tuple) -> dict:
        """A stored row as one record of a reply, as it is, carrying nothing."""
        return self.records((row,), self.blank)[0]

    def example(self, n: int) -> dict:
        """The n-th made-up reading's own fields (no device_id or timestamp): the simulator's and
        the tests' builders."""
        return {f.name: f.example(n) for f in self.fields}

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

    def latest_record(self, latest: list, carried: dict) -> dict:
        """The catalogue's latest row of a device (its values and timestamp, as stored) as a reply
        record; `carried`: the latest state of each column replies carry forward (see power)."""
        return self.record(tuple(latest))

    @staticmethod
    def key(row: tuple) -> tuple:
        """A row's place in the index order: (timestamp, *values)."""
        return (row[-1], *row[:-1])

    def state_before(self, device_id: str, date: str, before: str | None) -> tuple:
        """What records carry forward from earlier rows (see power); `before` is a timestamp
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
        """Ids of rows dated before `cutoff` that replies still need (see power)."""
        return set()


def _model(name: str, table: str, columns: Columns, indexes=()) -> type[Model]:
    """A peewee model; its fields made here, in order: peewee orders columns by when a field was made."""
    meta = type("Meta", (), {"table_name": table, "indexes": indexes})
    fields = {"id": AutoField()} | {column: make() for column, make in columns.items()}
    return type("".join(w.title() for w in name.split("_")), (Model,), {**fields, "Meta": meta})


def _identity(model: type[Model], values: tuple[str, ...]) -> None:
    """The reading's identity, and the day queries' index: (device_id, date, timestamp, *values)."""
    columns = ("device_id", "date", "timestamp", *values)
    model._meta.indexes.append(ModelIndex(model, [getattr(model, c) for c in columns], unique=True,
                                          name=f"{model._meta.table_name}_identity"))
