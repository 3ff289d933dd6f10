"""What is kept up to date in the transaction that stores readings, from the rows it inserted (a
redelivered reading is not inserted, so it counts once): the device catalogue (`devices`, one row per
device) and the hourly rollups behind summaries (`*_hourly`), which retention leaves in place.

Every merge is exact in any order, so late and out-of-order readings give the same rollups: counts
and sums of whole millionths add up, minima and maxima are minima and maxima, and a late power
event has its hour summed again from the hour's stored events. The statements merge inside the database
(upserts), so several instances writing to one PostgreSQL database never lose each other's updates."""

from __future__ import annotations

from datetime import datetime

import orjson
import peewee

from actors.devices import BUILTIN_TYPES, DeviceType, DeviceTypes
from actors.devices.kinds import OnTime
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.storage.models import Device, is_sqlite

HOUR_US = 3600 * 10**6


class Dialect:
    """What differs between SQLite and PostgreSQL in these statements."""

    def __init__(self, db: peewee.Database):
        sqlite = is_sqlite(db)
        self.p = db.param
        self.least, self.greatest = ("MIN", "MAX") if sqlite else ("LEAST", "GREATEST")
        self.for_update = "" if sqlite else " FOR UPDATE"

    def upsert(self, model: type[peewee.Model], key: tuple[str, ...], merged: dict[str, str]) -> str:
        """INSERT of key + merged columns; on a conflict over `key`, each merged column is set to its
        expression ({t}: the stored row, {least}/{greatest}: the two-value min/max)."""
        table = model._meta.table_name
        columns = (*key, *merged)
        sets = ", ".join(f"{c} = " + e.format(t=table, least=self.least, greatest=self.greatest)
                         for c, e in merged.items())
        return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([self.p] * len(columns))}) "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


def offset_us(local: str) -> int:
    """Microseconds from the start of the hour of a timestamp in the site's time (SiteTime.local)."""
    moment = datetime.fromisoformat(local)
    return (moment.minute * 60 + moment.second) * 10**6 + moment.microsecond


def rollup_for(device: DeviceType, dialect: Dialect, site: SiteTime):
    """The rollup that merges a type's rows: its summary's kinds (devices/kinds.py) say which."""
    return (StatesRollup if isinstance(device.summary[0], OnTime) else Rollup)(device, dialect, site)


class Rollup:
    """The hourly rollup of one device type, composed of its summary kinds: `merge` folds the rows a
    transaction inserted into one row per rollup key (device, hour, and each Distinct value), then
    adds them to what is stored in one upsert per key. Its hours are the site's (sitetime.py)."""

    def __init__(self, device: DeviceType, dialect: Dialect, site: SiteTime):
        self.site = site
        merged = {"readings": "{t}.readings + excluded.readings"}
        for kind in device.summary:
            merged |= kind.merged()
        self.sql = dialect.upsert(device.hourly, device.rollup_key, merged)
        self.fold = _fold(device)

    def merge(self, db, rows: list[tuple]) -> None:
        db.executemany(self.sql, self.fold(rows, self.site.hour_of))


def _fold(device: DeviceType):
    """fold(rows, hour_of): the upsert's parameters, one per rollup key, of rows as stored. Made once
    from the type's summary kinds, as dataclasses make their methods: the hot loop of a fleet's burst,
    where a loop over kinds per row cost 3 µs a reading against 0.8 µs for this."""
    position = {c: i for i, c in enumerate(device.value_columns, 1)}  # in a stored row
    key = ", ".join(["row[0]", f"hour_of(row[{len(device.value_columns) + 1}])",
                     *(f"row[{position[c]}]" for c in device.rollup_key[2:])])
    kinds, slot = [], 1
    for n, kind in enumerate(device.summary):
        kinds.append((kind, f"v{n}", slot))
        slot += len(kind.start("v"))
    values = [f"{v} = row[{position[kind.column]}]" for kind, v, _ in kinds]
    lines = ["def fold(rows, hour_of):", "    hours = {}", "    get = hours.get", "    for row in rows:",
             f"        key = ({key},)", *(f"        {line}" for line in values), "        h = get(key)",
             "        if h is None:",
             f"            hours[key] = [1, {', '.join(e for kind, v, _ in kinds for e in kind.start(v))}]",
             "            continue", "        h[0] += 1", *(f"        {line}" for kind, v, s in kinds for line in kind.add(v, s)),
             f"    return [(*key, {', '.join(['h[0]', *(e for kind, _, s in kinds for e in kind.folded(s))])})"
             " for key, h in hours.items()]"]
    namespace = {}
    exec("\n".join(lines), namespace)  # noqa: S102 - code made from the definitions above, not from input
    return namespace["fold"]


class StatesRollup:
    """The rollup of a type summarised by OnTime (power: EB and DG). An hour's events are folded into
    per-source aggregates: the first event's offset, the ON time from it to the hour's end, the last
    state and when it was (its timestamp). An event that sorts after a source's last one costs the
    same however many the hour holds; one that comes late (before the last) makes the hour be summed
    again from its stored events, exactly. Events are folded by their time at the site
    (SiteTime.local), so the `*_last_at` columns hold that."""

    def __init__(self, device: DeviceType, dialect: Dialect, site: SiteTime):
        self.site = site
        p, table = dialect.p, device.hourly._meta.table_name
        prefixes = list(device.summary[0].sources.values())
        self.width = len(prefixes)
        columns = [f"{s}_{c}" for s in prefixes for c in ("first_us", "on_us", "last", "last_at")]
        zeros = ", ".join(f"{s}_on_us, {s}_last" for s in prefixes)
        self.create_sql = (f"INSERT INTO {table} (device_id, hour, readings, {zeros}) VALUES ({p}, {p}, 0"
                           + ", 0, ''" * len(prefixes) + ") ON CONFLICT (device_id, hour) DO NOTHING")
        self.read_sql = (f"SELECT readings, {', '.join(columns)} FROM {table} WHERE device_id = {p} AND hour = {p}"
                         f"{dialect.for_update}")
        self.write_sql = (f"UPDATE {table} SET readings = {p}, " + ", ".join(f"{c} = {p}" for c in columns)
                          + f" WHERE device_id = {p} AND hour = {p}")
        sources = ", ".join(device.summary[0].sources)  # the identity index serves this; a day of events is small
        self.events_sql = (f"SELECT timestamp, {sources} FROM {device.model._meta.table_name} "
                           f"WHERE device_id = {p} AND date = {p}")

    def merge(self, db, rows):
        hours: dict[tuple[str, str], list] = {}
        local, width = self.site.local, self.width
        for row in rows:
            at = local(row[width + 1])
            hours.setdefault((row[0], at[:13]), []).append((at, *row[1:width + 1]))
        for key, new in hours.items():
            db.execute(self.create_sql, key)
            readings, *stored = db.execute(self.read_sql, key).fetchone()
            sources = [Source(*stored[4 * s:4 * s + 4]) for s in range(width)]
            new.sort()
            late = any(not source.after(e[0], e[i]) for i, source in enumerate(sources, 1) for e in new if e[i])
            if late:
                sources = self._summed(db, key, readings + len(new), new, sources)
            else:
                for timestamp, *states in new:
                    for source, state in zip(sources, states):
                        if state:
                            source.add(timestamp, state)
            db.execute(self.write_sql, (readings + len(new), *(v for s in sources for v in s.row()), *key))

    def _summed(self, db, key: tuple[str, str], readings: int, new: list, sources: list[Source]) -> list[Source]:
        """The hour summed again from its stored events (the new ones are stored by now). If
        retention has deleted some of them, the new events are folded in as the hour's latest."""
        device_id, hour = key
        local = self.site.local
        events = sorted(e for e in ((local(t), *states) for t, *states in db.execute(self.events_sql,
                                                                                      (device_id, hour[:10])))
                        if e[0][:13] == hour)
        if len(events) < readings:
            for timestamp, *states in new:
                for source, state in zip(sources, states):
                    if state:
                        latest = source.last_at
                        source.add(timestamp, state)
                        source.last_at = max(timestamp, latest or timestamp)
            return sources
        summed = [Source(None, 0, "", None) for _ in sources]
        for timestamp, *states in events:
            for source, state in zip(summed, states):
                if state:
                    source.add(timestamp, state)
        return summed


class Source:
    """One source's (power's EB or DG) aggregate of an hour, folded one event at a time in order: the ON
    time from the first event to the hour's end, each event ending the segment before it."""
    __slots__ = ("first_us", "on_us", "last", "last_at")

    def __init__(self, first_us: int | None, on_us: int, last: str, last_at: str | None):
        self.first_us, self.on_us, self.last, self.last_at = first_us, on_us, last, last_at

    def after(self, timestamp: str, state: str) -> bool:
        """Whether the event sorts after this source's last one, as the events of an hour sort."""
        return self.last_at is None or (timestamp, state) >= (self.last_at, self.last)

    def add(self, timestamp: str, state: str) -> None:
        at = offset_us(timestamp)
        if self.first_us is None:
            self.first_us = at
        elif self.last == "ON":
            self.on_us -= HOUR_US - at  # the segment before ends here, not at the hour's end
        if state == "ON":
            self.on_us += HOUR_US - at
        self.last, self.last_at = state, timestamp

    def row(self) -> tuple:
        return self.first_us, self.on_us, self.last, self.last_at


class Catalogue:
    """The catalogue's rows, merged from the readings a transaction stored: per device, how many,
    the earliest and latest timestamps, the latest row, and the latest state of each carried column
    (power's EB and DG). A device's latest row is the last by (timestamp, values), as {"latest": true}."""

    def __init__(self, dialect: Dialect, types: DeviceTypes):
        g = "{greatest}(COALESCE({t}.%s, excluded.%s), COALESCE(excluded.%s, {t}.%s))"
        newer = "CASE WHEN {t}.%s IS NULL OR excluded.%s >= {t}.%s THEN excluded.%s ELSE {t}.%s END"
        merged = {
            "first_seen": "{least}(COALESCE({t}.first_seen, excluded.first_seen), "
                          "COALESCE(excluded.first_seen, {t}.first_seen))",
            "latest": newer % ("last_seen", "last_seen", "last_seen", "latest", "latest"),
            "last_seen": g % (("last_seen",) * 4),
            "received_at": "COALESCE(excluded.received_at, {t}.received_at)",
            "readings": "{t}.readings + excluded.readings",
            "clock_rejected": "{t}.clock_rejected + excluded.clock_rejected",
            "state": "CASE WHEN excluded.readings > 0 THEN 'live' ELSE {t}.state END"}
        self.sql = {}
        for device in types.values():
            carried = {}
            for c in device.carried:  # each in a column of `devices` of its name, and `{name}_at`
                assert c in Device._meta.fields and f"{c}_at" in Device._meta.fields, f"devices.{c} for {device}"
                at = f"{c}_at"
                carried[c] = newer % (at, at, at, c, c)
                carried[at] = g % (at, at, at, at)
            # a type without carried columns binds fewer parameters per device (a fleet's burst)
            self.sql[device.name] = dialect.upsert(Device, ("type", "device_id"), {**merged, **carried})

    def merge(self, db, device: DeviceType, rows: list[tuple], wrong_clocks, received_at: str) -> list[tuple]:
        """Merge what a transaction stored of one type; per device (device_id, last_seen, readings)."""
        width = len(device.value_columns)
        carried = [i for i, c in enumerate(device.value_columns, 1) if c in device.carried]
        seen: dict[str, list] = {}
        get = seen.get
        for row in rows:  # a device's first row of the commit is the whole story for most (a fleet's burst)
            device_id, timestamp = row[0], row[width + 1]
            if (d := get(device_id)) is None:
                seen[device_id] = d = [1, timestamp, timestamp, row, {}, 0]
            else:
                d[0] += 1
                if timestamp < d[1]:
                    d[1] = timestamp
                if timestamp > d[2] or (timestamp == d[2] and row[1:width + 1] > d[3][1:width + 1]):
                    d[2], d[3] = timestamp, row
            for i in carried:
                if row[i] and (timestamp, row[i]) >= d[4].get(i, ("", "")):
                    d[4][i] = (timestamp, row[i])
        for device_id in wrong_clocks:
            if (d := seen.get(device_id)) is None:
                seen[device_id] = d = [0, None, None, None, {}, 0]
            d[5] += 1
        kind, none = device.name, (None, None)
        # the latest row's values and timestamp (its `last`): the record a latest request gives
        params = [(kind, device_id, first, orjson.dumps(row[1:width + 2]).decode() if row is not None else None, last,
                   received_at if n else None, n, clock, "live" if n else None)
                  for device_id, (n, first, last, row, states, clock) in seen.items()]
        if carried:
            params = [(*p, *(value for i in carried for value in states.get(i, none)[::-1]))  # (state, at) each
                      for p, states in zip(params, (d[4] for d in seen.values()))]
        db.executemany(self.sql[device.name], params)
        return [(device_id, d[2], d[0]) for device_id, d in seen.items() if d[0]]


class ServerCursor:
    """The two calls of a sqlite3 connection that rollups.py and Failures use, on PostgreSQL;
    statements of a batch go to the server a hundred at a time."""

    def __init__(self, db: peewee.Database):
        self.db = db

    def execute(self, sql: str, params=()):
        return self.db.execute_sql(sql, params)

    def executemany(self, sql: str, seq) -> None:
        from psycopg2.extras import execute_batch  # only where PostgreSQL is used
        execute_batch(self.db.cursor(), sql, seq)


def stored_rows(device: DeviceType, batch: int = 10_000):
    """Every stored row of a type as the writer hands rows to Upkeep.stored (device_id, values,
    timestamp, date, created_at), in id order, `batch` at a time: to build the rollups again."""
    m = device.model
    columns = [m.device_id, *(getattr(m, c) for c in device.value_columns), m.timestamp, m.date, m.created_at]
    last_id = 0
    while rows := list(m.select(m.id, *columns).where(m.id > last_id).order_by(m.id).limit(batch).tuples()):
        last_id = rows[-1][0]
        yield [row[1:] for row in rows]


def cursor_of(db: peewee.Database):
    """What Upkeep writes through: SQLite's own connection, or a ServerCursor."""
    return db.connection() if is_sqlite(db) else ServerCursor(db)


class Upkeep:
    """Everything a transaction keeps up to date besides the readings themselves."""

    def __init__(self, db: peewee.Database, site: SiteTime = UNZONED, types: DeviceTypes = BUILTIN_TYPES):
        dialect = Dialect(db)
        self.types = types
        self.catalogue = Catalogue(dialect, types)
        self.rollups = {name: rollup_for(device, dialect, site) for name, device in types.items()}
        p = dialect.p
        self.count_sql = {name: f"SELECT device_id, COUNT(*) FROM {d.model._meta.table_name} "
                                f"WHERE id BETWEEN {p} AND {p} GROUP BY device_id" for name, d in types.items()}
        self.forget_sql = f"UPDATE devices SET readings = readings - {p} WHERE type = {p} AND device_id = {p}"
        self.stale_sql = f"UPDATE devices SET state = 'stale' WHERE type = {p} AND device_id = {p} AND received_at = {p}"

    def stored(self, db, inserted: dict[str, list[tuple]], wrong_clocks: dict[str, list[str]],
               received_at: str, stale=()) -> dict[str, list[tuple]]:
        """Merge what one transaction stored (rows per type, as stored: device_id, values, timestamp,
        date, created_at; and device ids of clock rejections per
        type), and keep the `stale` devices' state (see MarkStale); per type, (device_id, last_seen,
        readings) of each device that got readings."""
        if stale:
            db.executemany(self.stale_sql, stale)
        seen = {}
        for name in inserted.keys() | wrong_clocks.keys():
            rows = inserted.get(name, [])
            if rows:
                self.rollups[name].merge(db, rows)
            seen[name] = self.catalogue.merge(db, self.types[name], rows, wrong_clocks.get(name, ()), received_at)
        return seen

    def deleting(self, db, table: str, first_id: int, last_id: int) -> None:
        """Rows first_id..last_id of `table` are about to be deleted (retention): count them out."""
        name = next((n for n, d in self.types.items() if d.model._meta.table_name == table), None)
        if name is not None:
            counts = db.execute(self.count_sql[name], (first_id, last_id)).fetchall()
            db.executemany(self.forget_sql, [(n, name, device_id) for device_id, n in counts])
