"""Summaries: a device's readings by the hour or by the day, from the hourly rollups (rollups.py),
so that a month is one small reply and outlives retention. Buckets are the site's wall-clock hours
and days (sitetime.py); every bucket of the range is there, in order, with "readings": 0 where there
were none.

Power's ON time is carried forward as replies carry state: from the latest earlier event of each
source, through hours without events, up to the device's "now" (its latest timestamp, advanced by
the time since that reading was stored), never into hours that have not happened for it yet."""

from __future__ import annotations

import math
from datetime import date as Date
from datetime import datetime, timedelta, timezone

import peewee

from actors.devices import DeviceType
from actors.storage.models import Device, FingerprintHourly, PowerHourly, TemperatureHourly
from actors.storage.rollups import HOUR_US
from actors.protocol.sitetime import UNZONED, SiteTime

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


def average(total: float, n: int) -> float | None:
    """The mean of values summed in whole millionths, to a millionth."""
    return round(total / n) / 1e6 if n and math.isfinite(total) else None


def seconds(us: int) -> int | float:
    return us // 10**6 if us % 10**6 == 0 else us / 1e6


class Summaries:
    """Reads one summary over the query actor's connection."""

    def __init__(self, db: peewee.Database, clock=lambda: datetime.now(timezone.utc), site: SiteTime = UNZONED):
        self.db = db
        self.clock = clock
        self.site = site
        p = db.param
        self._sql = {}
        for kind, key in (("hour", "hour"), ("day", "substr(hour, 1, 10)")):
            t = TemperatureHourly._meta.table_name
            self._sql["temperature", kind] = (
                f"SELECT {key}, SUM(readings), MIN(temperature_min), MAX(temperature_max), SUM(temperature_sum), "
                f"MIN(humidity_min), MAX(humidity_max), SUM(humidity_sum), SUM(high), SUM(low) FROM {t} "
                f"WHERE device_id = {p} AND hour >= {p} AND hour <= {p} GROUP BY {key} ORDER BY {key}")
            f = FingerprintHourly._meta.table_name
            self._sql["fingerprint", kind] = (
                f"SELECT {key}, SUM(passes), SUM(fails), COUNT(DISTINCT user_id) FROM {f} "
                f"WHERE device_id = {p} AND hour >= {p} AND hour <= {p} GROUP BY {key} ORDER BY {key}")
        pw = PowerHourly._meta.table_name
        self._power_sql = (f"SELECT hour, readings, eb_first_us, eb_on_us, eb_last, dg_first_us, dg_on_us, dg_last "
                           f"FROM {pw} WHERE device_id = {p} AND hour >= {p} AND hour <= {p} ORDER BY hour")
        self._carry_sql = {s: f"SELECT {s}_last FROM {pw} WHERE device_id = {p} AND hour < {p} AND {s}_last != '' "
                              f"ORDER BY hour DESC LIMIT 1" for s in ("eb", "dg")}

    def buckets(self, device: DeviceType, device_id: str, kind: str, starts: list[str]) -> list[dict]:
        """The buckets that start at `starts` (consecutive, of one kind)."""
        first, last = starts[0][:13], f"{starts[-1][:10]}T23" if kind == "day" else starts[-1][:13]
        if device.name == "power":
            return self._power(device_id, kind, starts, first, last)
        rows = {row[0]: row[1:] for row in self.db.execute_sql(self._sql[device.name, kind], (device_id, first, last))}
        build = self._temperature if device.name == "temperature" else self._fingerprint
        return [build(start, rows.get(start[:13] if kind == "hour" else start)) for start in starts]

    @staticmethod
    def _temperature(start: str, row) -> dict:
        if row is None:
            empty = {"min": None, "max": None, "avg": None}
            return {"start": start, "readings": 0, "temperature": empty, "humidity": dict(empty), "high": 0, "low": 0}
        n, t_min, t_max, t_sum, h_min, h_max, h_sum, high, low = row
        return {"start": start, "readings": n,
                "temperature": {"min": t_min, "max": t_max, "avg": average(t_sum, n)},
                "humidity": {"min": h_min, "max": h_max, "avg": average(h_sum, n)}, "high": high, "low": low}

    @staticmethod
    def _fingerprint(start: str, row) -> dict:
        passes, fails, users = row or (0, 0, 0)
        return {"start": start, "readings": passes + fails, "pass": passes, "fail": fails, "users": users}

    def _power(self, device_id: str, kind: str, starts: list[str], first: str, last: str) -> list[dict]:
        rows = list(self.db.execute_sql(self._power_sql, (device_id, first, last)))  # by hour
        carry = []
        for source in ("eb", "dg"):
            row = self.db.execute_sql(self._carry_sql[source], (device_id, first)).fetchone()
            carry.append(row[0] if row else "")
        now = self._device_now(device_id)
        span = HOUR if kind == "hour" else timedelta(days=1)
        buckets, i = [], 0
        for start in starts:
            begin = datetime.fromisoformat(start if kind == "hour" else f"{start}T00:00:00")
            bucket, on, at = {"start": start, "readings": 0}, [0, 0], begin
            # the hours of this bucket that have events; between them, each source stays as it was
            while i < len(rows) and rows[i][0] < (begin + span).isoformat()[:13]:
                hour_key, readings, *sources = rows[i]
                hour = datetime.fromisoformat(f"{hour_key}:00:00")
                for s in (0, 1):
                    on[s] += steady_on(carry[s], at, hour, now)
                    first_us, on_us, last_state = sources[3 * s:3 * s + 3]
                    us, carry[s] = on_time(carry[s], first_us, on_us, last_state, hour, now)
                    on[s] += us
                bucket["readings"] += readings
                at, i = hour + HOUR, i + 1
            for s in (0, 1):
                on[s] += steady_on(carry[s], at, begin + span, now)
            bucket["eb_on_s"], bucket["dg_on_s"] = seconds(on[0]), seconds(on[1])
            buckets.append(bucket)
        return buckets

    def _device_now(self, device_id: str) -> datetime | None:
        """The device's own time now: its latest timestamp, advanced by the time since it was stored."""
        row = (Device.select(Device.last_seen, Device.received_at)
               .where((Device.type == "power") & (Device.device_id == device_id)).tuples().first())
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
