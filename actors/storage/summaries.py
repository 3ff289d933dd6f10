"""Summaries: a device's readings by the hour or by the day, from the hourly rollups (rollups.py),
so that a month is one small reply and outlives retention. Buckets are the site's wall-clock hours
and days (sitetime.py); every bucket of the range is there, in order, with "readings": 0 where there
were none.

A summary is composed of its type's summary kinds (devices/kinds.py). OnTime (power's) is carried
forward as replies carry state: from the latest earlier event of each source, through hours without
events, up to the device's "now" (its latest timestamp, advanced by the time since that reading was
stored), never into hours that have not happened for it yet."""

from __future__ import annotations

from datetime import date as Date
from datetime import datetime, timedelta, timezone

import peewee

from actors.devices import DeviceType
from actors.devices.kinds import OnTime
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.storage.models import Device
from actors.storage.rollups import HOUR_US

HOUR = timedelta(hours=1)


def bucket_starts(kind: str, from_date: str, to_date: str) -> list[str]:
    """Every bucket of the range (dates inclusive), as its "start"."""
    first, last = Date.fromisoformat(from_date), Date.fromisoformat(to_date)
    days = [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
    if kind == "day":
        return days
    return [f"{day}T{h:02d}:00:00" for day in days for h in range(24)]


def bucket_count(kind: str, from_date: str, to_date: str) -> int:
    days = (Date.fromisoformat(to_date) - Date.fromisoformat(from_date)).days + 1
    return days * (24 if kind == "hour" else 1)


def seconds(us: int) -> int | float:
    return us // 10**6 if us % 10**6 == 0 else us / 1e6


class Summaries:
    """Reads one summary over the query actor's connection."""

    def __init__(self, db: peewee.Database, clock=lambda: datetime.now(timezone.utc), site: SiteTime = UNZONED):
        self.db = db
        self.clock = clock
        self.site = site
        self._sql: dict[tuple[str, str], str] = {}  # (type, bucket kind) -> its SELECT, made on first use

    def buckets(self, device: DeviceType, device_id: str, kind: str, starts: list[str]) -> list[dict]:
        """The buckets that start at `starts` (consecutive, of one kind)."""
        first, last = starts[0][:13], f"{starts[-1][:10]}T23" if kind == "day" else starts[-1][:13]
        if isinstance(device.summary[0], OnTime):
            return self._on_time(device, device_id, kind, starts, first, last)
        if (sql := self._sql.get((device.name, kind))) is None:
            sql = self._sql[device.name, kind] = self._select(device, kind)
        rows = {row[0]: row[1:] for row in self.db.execute_sql(sql, (device_id, first, last))}
        widths = [len(k.select()) for k in device.summary]
        buckets = []
        for start in starts:
            row = rows.get(start[:13] if kind == "hour" else start)
            n = row[0] if row else 0
            bucket, at = {"start": start, "readings": n}, 1
            for summary_kind, width in zip(device.summary, widths):
                bucket |= summary_kind.bucket(row[at:at + width] if row else None, n)
                at += width
            buckets.append(bucket)
        return buckets

    def _select(self, device: DeviceType, kind: str) -> str:
        key, p = ("hour" if kind == "hour" else "substr(hour, 1, 10)"), self.db.param
        columns = ", ".join(["SUM(readings)", *(c for k in device.summary for c in k.select())])
        return (f"SELECT {key}, {columns} FROM {device.hourly._meta.table_name} "
                f"WHERE device_id = {p} AND hour >= {p} AND hour <= {p} GROUP BY {key} ORDER BY {key}")

    def _on_time(self, device: DeviceType, device_id: str, kind: str, starts: list[str], first: str,
                 last: str) -> list[dict]:
        prefixes = list(device.summary[0].sources.values())
        table, p = device.hourly._meta.table_name, self.db.param
        columns = ", ".join(f"{s}_first_us, {s}_on_us, {s}_last" for s in prefixes)
        rows = list(self.db.execute_sql(f"SELECT hour, readings, {columns} FROM {table} WHERE device_id = {p} "
                                        f"AND hour >= {p} AND hour <= {p} ORDER BY hour", (device_id, first, last)))
        carry = []
        for source in prefixes:
            row = self.db.execute_sql(f"SELECT {source}_last FROM {table} WHERE device_id = {p} AND hour < {p} AND "
                                      f"{source}_last != '' ORDER BY hour DESC LIMIT 1", (device_id, first)).fetchone()
            carry.append(row[0] if row else "")
        now = self._device_now(device.name, device_id)
        span = HOUR if kind == "hour" else timedelta(days=1)
        buckets, i, width = [], 0, len(prefixes)
        for start in starts:
            begin = datetime.fromisoformat(start if kind == "hour" else f"{start}T00:00:00")
            bucket, on, at = {"start": start, "readings": 0}, [0] * width, begin
            # the hours of this bucket that have events; between them, each source stays as it was
            while i < len(rows) and rows[i][0] < (begin + span).isoformat()[:13]:
                hour_key, readings, *sources = rows[i]
                hour = datetime.fromisoformat(f"{hour_key}:00:00")
                for s in range(width):
                    on[s] += steady_on(carry[s], at, hour, now)
                    first_us, on_us, last_state = sources[3 * s:3 * s + 3]
                    us, carry[s] = on_time(carry[s], first_us, on_us, last_state, hour, now)
                    on[s] += us
                bucket["readings"] += readings
                at, i = hour + HOUR, i + 1
            for s in range(width):
                on[s] += steady_on(carry[s], at, begin + span, now)
                bucket[f"{prefixes[s]}_on_s"] = seconds(on[s])
            buckets.append(bucket)
        return buckets

    def _device_now(self, kind: str, device_id: str) -> datetime | None:
        """The device's own time now: its latest timestamp, advanced by the time since it was stored."""
        row = (Device.select(Device.last_seen, Device.received_at)
               .where((Device.type == kind) & (Device.device_id == device_id)).tuples().first())
        if row is None or None in row:
            return None
        stored = datetime.fromisoformat(row[1]).replace(tzinfo=timezone.utc)
        return datetime.fromisoformat(self.site.local(row[0])).replace(tzinfo=None) + max(self.clock() - stored,
                                                                                          timedelta(0))


def steady_on(state: str, begin: datetime, end: datetime, now: datetime | None) -> int:
    """ON microseconds from `begin` to `end` (cut at `now`) of a source that stays in `state`."""
    if state != "ON":
        return 0
    if now is not None:
        end = min(end, now)
    return max(0, (end - begin) // timedelta(microseconds=1))


def on_time(carry: str, first_us: int | None, on_us: int, last: str, hour: datetime,
            now: datetime | None) -> tuple[int, str]:
    """One source's ON microseconds in one hour, and its state at the hour's end: from the state
    carried in until the hour's first event, then what the rollup counted; cut at `now`."""
    if first_us is None:
        full, state = (HOUR_US if carry == "ON" else 0), carry
    else:
        full, state = (first_us if carry == "ON" else 0) + on_us, last
    if now is None or now >= hour + HOUR:
        return full, state
    if now <= hour:
        return 0, state
    # every event is before the device's now: only the tail after it is cut
    return full - ((hour + HOUR - now) // timedelta(microseconds=1) if state == "ON" else 0), state
