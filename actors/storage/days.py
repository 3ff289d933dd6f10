"""A device-day for an app: its records in pages that fit the broker, or its latest record. A
cursor is the last record's place in the index order (and, for power, the state carried to it), so
pages neither skip nor repeat records while new readings arrive; a time window is the site's time."""

from __future__ import annotations

from itertools import islice

import orjson

from actors.devices import DeviceType
from actors.protocol.replies import cut, splice
from actors.protocol.requests import Ask, encode_cursor
from actors.protocol.sitetime import SiteTime

SMALLEST_RECORD = 50  # bytes of JSON: bounds how many rows a page can need


class DayPages:
    """Reads a device-day's pages over the query actor's connection."""

    def __init__(self, site: SiteTime):
        self.site = site
        self._record_bytes: dict[str, float] = {}  # per device type: the JSON of a record, on average

    def latest(self, device: DeviceType, ask: Ask) -> bytes:
        row = device.latest_row(ask.device_id)
        date, records = None, []
        if row is not None:
            timestamp = row[-1]
            date = self.site.local(timestamp)[:10]
            records = device.records([row], device.state_before(ask.device_id, date, timestamp))
        return day_reply(ask, date, len(records), orjson.dumps(records)[1:-1])

    def page(self, device: DeviceType, ask: Ask, cap: int) -> bytes | None:
        """One page: `limit` records, or as many as fit in `cap` bytes; `next` if more. None if
        not even one record fits."""
        fits = max(1, cap // SMALLEST_RECORD)
        wanted = min(ask.limit or fits, fits)
        state = ask.state if ask.after else self._state_before(device, ask)
        # Rows past the cap would be read, made records and encoded for nothing (a quarter of a
        # 1,440-reading day): read about as many as fit, by the size of this type's records in
        # earlier replies, and read on only if that fell short.
        guess = self._record_bytes.get(device.name)
        take = wanted if guess is None else min(wanted, int(cap / guess * 1.005) + 4)
        rows = self._rows(device, ask, ask.after, take + 1)
        records = device.records(rows[:take], state)
        # Room is left for `next` (a cursor like the first row's, and then some).
        frame = len(day_reply(ask, ask.date, 0, b"", encode_cursor(device, device.key(rows[0]), state)
                                if rows else None)) + 64
        while True:
            # The most records that keep the reply under the cap, cut from one encoding of them
            # all: a call per record cost ten times as much.
            encoded, n = cut(orjson.dumps(records), len(records), cap - frame)
            if n < len(records) or len(rows) <= len(records) or len(records) >= wanted:
                break  # cut by the cap, or the day is all here, or so is `wanted`
            rows += self._rows(device, ask, device.key(rows[-1]), wanted + 1 - len(rows))
            records += device.records(rows[len(records):wanted], device.state_after(records[-1]))
        if records and not n:
            return None
        if n:
            self._record_bytes[device.name] = len(encoded) / n
        more = len(rows) > n
        next_ = encode_cursor(device, device.key(rows[n - 1]), device.state_after(records[n - 1])) if more else None
        return day_reply(ask, ask.date, n, encoded, next_)

    def _rows(self, device: DeviceType, ask: Ask, after: tuple | None, limit: int) -> list[tuple]:
        """The day's rows past `after` within the request's time window. The window is in the site's
        time: where that is not what the timestamps say (site.timezone, devices sending an offset),
        the rest of the day is read and the window applied to each row's time at the site."""
        site = self.site
        if site.zone is None or not (ask.start or ask.end):
            return device.rows(ask.device_id, ask.date, after, ask.start, ask.end, limit=limit)
        low, high = self._window(ask)
        rows = (row for row in device.rows(ask.device_id, ask.date, after) if low <= site.local(row[-1]) < high)
        return list(islice(rows, limit))

    def _state_before(self, device: DeviceType, ask: Ask) -> tuple:
        """What the first record carries in from earlier rows (see devices.Power)."""
        site = self.site
        if site.zone is None or not ask.start:
            return device.state_before(ask.device_id, ask.date, f"{ask.date}T{ask.start}" if ask.start else None)
        low = self._window(ask)[0]
        state = device.state_before(ask.device_id, ask.date, None)
        earlier = [row for row in device.rows(ask.device_id, ask.date) if site.local(row[-1]) < low]
        return device.state_after(device.records(earlier, state)[-1]) if earlier else state

    @staticmethod
    def _window(ask: Ask) -> tuple[str, str]:
        """The request's time window as bounds of a timestamp's text at the site (as rows() has them)."""
        return (f"{ask.date}T{ask.start}" if ask.start else "",
                f"{ask.date}T{ask.end}\uffff" if ask.end else "\uffff")


def day_reply(ask: Ask, date: str | None, count: int, records: bytes, next_: str | None = None) -> bytes:
    """A day's reply: {"device_id", "date", "count", "records", "next"?, "request_id"?}."""
    return splice({"device_id": ask.device_id, "date": date, "count": count}, "records", records,
                  {"next": next_, "request_id": ask.request_id})
