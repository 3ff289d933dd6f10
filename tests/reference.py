"""Summaries computed the plain way, from raw rows, to hold the service's (from its rollups) against."""

from __future__ import annotations

from datetime import datetime, timedelta

from actors.storage.summaries import bucket_starts

US = timedelta(microseconds=1)


def _bucket_of(kind: str, timestamp: str) -> str:
    return f"{timestamp[:13]}:00:00" if kind == "hour" else timestamp[:10]


def _average(values: list[float]) -> float | None:
    return round(sum(round(v * 1e6) for v in values) / len(values)) / 1e6 if values else None


def temperature(kind: str, rows, from_date: str, to_date: str) -> list[dict]:
    """rows: (temperature, humidity, status, timestamp)."""
    buckets = []
    for start in bucket_starts(kind, from_date, to_date):
        mine = [r for r in rows if _bucket_of(kind, r[3]) == start]
        t, h = [r[0] for r in mine], [r[1] for r in mine]
        buckets.append({"start": start, "readings": len(mine),
                        "temperature": {"min": min(t, default=None), "max": max(t, default=None), "avg": _average(t)},
                        "humidity": {"min": min(h, default=None), "max": max(h, default=None), "avg": _average(h)},
                        "high": sum(r[2] == "HIGH" for r in mine), "low": sum(r[2] == "LOW" for r in mine)})
    return buckets


def fingerprint(kind: str, rows, from_date: str, to_date: str) -> list[dict]:
    """rows: (user_id, auth_status, timestamp)."""
    buckets = []
    for start in bucket_starts(kind, from_date, to_date):
        mine = [r for r in rows if _bucket_of(kind, r[2]) == start]
        buckets.append({"start": start, "readings": len(mine), "pass": sum(r[1] == "PASS" for r in mine),
                        "fail": sum(r[1] == "FAIL" for r in mine), "users": len({r[0] for r in mine})})
    return buckets


def power(kind: str, rows, from_date: str, to_date: str, now: datetime | None = None) -> list[dict]:
    """rows: every (ebstatus, dgstatus, timestamp) of the device; ON time up to `now` (local)."""
    events = sorted((r[2], r[0], r[1]) for r in rows)
    buckets = []
    for start in bucket_starts(kind, from_date, to_date):
        begin = datetime.fromisoformat(start if kind == "hour" else f"{start}T00:00:00")
        end = begin + (timedelta(hours=1) if kind == "hour" else timedelta(days=1))
        if now is not None:
            end = max(begin, min(end, now))
        bucket = {"start": start, "readings": sum(_bucket_of(kind, e[0]) == start for e in events)}
        for source, name in ((1, "eb_on_s"), (2, "dg_on_s")):
            changes = [(datetime.fromisoformat(e[0]).replace(tzinfo=None), e[source]) for e in events if e[source]]
            on = timedelta(0)
            for (at, state), (until, _) in zip(changes, [*changes[1:], (datetime.max, "")]):
                if state == "ON":
                    on += max(timedelta(0), min(until, end) - max(at, begin))
            us = on // US
            bucket[name] = us // 10**6 if us % 10**6 == 0 else us / 1e6
        buckets.append(bucket)
    return buckets
