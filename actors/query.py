"""A query actor: answers an app's request for a device-day (or its latest reading), a summary
(summaries.py) or the device catalogue (catalogue.py) over its own read-only connection. Several run
side by side (a pool); WAL lets them read while the writer writes.

A request the seed describes ({"device_id", "date"}) gets the seed's reply, whole, as long as
it fits `queries.max_reply_bytes`; a larger day, or a request with `limit`, gets a page and a
`next` cursor. A cursor is the last record's place in the index order (and, for power, the
state carried to it), so pages neither skip nor repeat records while new readings arrive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from itertools import islice

import orjson
import peewee

from actors.catalogue import CatalogueReader
from actors.devices import DEVICE_TYPES, DeviceType
from actors.messages import Reply, Request
from actors.models import is_sqlite
from actors.peers import LINK, Peers, Supervised
from actors.readgate import ReadGate
from actors.requests import (CATALOGUE, Ask, CatalogueAsk, RequestError, SummaryAsk, encode_cursor, error_reply,
                             internal_error, pack, parse_catalogue, parse_request)
from actors.sitetime import UNZONED, SiteTime
from actors.summaries import Summaries, bucket_starts

log = logging.getLogger(__name__)
SMALLEST_RECORD = 50  # bytes of JSON: bounds how many rows a page can need
SMALLEST_BUCKET = 60  # ... how many buckets
SMALLEST_ENTRY = 150  # ... how many catalogue entries


@dataclass(frozen=True)
class QueryRules:
    max_request_bytes: int = 4096
    max_reply_bytes: int = 100_000
    max_page_records: int = 1000  # the most a `limit` may ask for
    readable: dict = field(default_factory=dict)  # app-id glob -> device-id globs; empty: all
    max_summary_buckets: int = 1000
    live_types: frozenset = frozenset({"temperature"})  # device types with liveness (devices.*_stale_after)
    site: SiteTime = UNZONED  # the calendar of days, time windows and summaries


class QueryActor(Supervised):
    def __init__(self, name: str, database: peewee.Database, peers: Peers, rules: QueryRules,
                 supervisor=None, gate: ReadGate | None = None, marks=None):
        super().__init__(name, supervisor, marks)
        self.db = database
        self.peers = peers
        self.rules = rules
        self.gate = gate or ReadGate()
        self.summaries = Summaries(database, site=rules.site)
        self._record_bytes: dict[str, float] = {}  # per device type: the JSON of a record, on average
        self.catalogue = CatalogueReader(database, set(rules.live_types))

    def on_start(self):
        self.db.connect(reuse_if_open=True)
        if is_sqlite(self.db):
            self.db.execute_sql("PRAGMA query_only = 1")  # this thread's connection only reads

    def on_stop(self):
        self.db.close()

    def on_failure(self, exception_type, exception_value, traceback):
        self.db.close()
        super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message):
        if not isinstance(message, Request):
            log.warning("%s ignored an unexpected message: %r", self.name, message)
            return
        self.handling((message.ack_id,))  # named to the supervisor if this crashes the actor
        try:
            body = self.answer(message.device, message.payload, message.app_id, message.max_bytes)
        except Exception:  # noqa: BLE001 - a bug must cost one error reply, not the actor
            log.exception("%s failed to answer a %s request on %s (payload %r); answered internal_error",
                          self.name, message.device, message.reply_topic, message.payload[:512])
            body = internal_error(message.payload, self.rules.max_request_bytes)
        error = isinstance(body, dict)  # an error reply; the data comes encoded
        self.handled()  # before the reply: once acknowledged, its packet id is the broker's to reuse
        self.peers.tell(LINK, Reply(message.ack_id, orjson.dumps(body) if error else body, error=error))

    def may_read(self, app_id: str, device_id: str) -> bool:
        """Globs match literally otherwise: fnmatchcase, so case matters and '/' is no separator."""
        if not self.rules.readable:
            return True
        return any(fnmatchcase(app_id, apps) and any(fnmatchcase(device_id, d) for d in devices)
                   for apps, devices in self.rules.readable.items())

    def answer(self, kind: str, payload: bytes, app_id: str = "", max_bytes: int | None = None) -> bytes | dict:
        """The reply to a request (`kind`: a device type, or CATALOGUE), at most `max_bytes` of JSON
        (what the broker takes) and `queries.max_reply_bytes`: the data as JSON, or an error reply (a dict)."""
        if len(payload) > self.rules.max_request_bytes:
            log.info("refused a %s request of %d bytes", kind, len(payload))
            return error_reply("too_large", f"the request is {len(payload)} bytes, over the "
                                            f"{self.rules.max_request_bytes}-byte limit")
        cap = min(self.rules.max_reply_bytes, max_bytes or self.rules.max_reply_bytes)
        try:
            if kind == CATALOGUE:
                ask = parse_catalogue(payload, tuple(DEVICE_TYPES), self.rules.max_page_records)
                known, about = {"request_id": ask.request_id}, "the catalogue"
                read = lambda: self.catalogue_page(ask, app_id, cap)  # noqa: E731
            else:
                device = DEVICE_TYPES[kind]
                ask = parse_request(payload, device, self.rules.max_page_records, self.rules.max_summary_buckets,
                                    self.rules.site)
                known, about = {"request_id": ask.request_id, "device_id": ask.device_id}, ask.device_id
                if isinstance(ask, SummaryAsk):
                    read = lambda: self.summary_page(device, ask, cap)  # noqa: E731
                else:
                    known["date"] = ask.date
                    read = lambda: self.latest(device, ask) if ask.latest else self.page(device, ask, cap)  # noqa: E731
        except RequestError as exc:
            log.info("bad %s request: %s", kind, exc)
            return error_reply(exc.code, str(exc), **exc.known)
        known = {k: v for k, v in known.items() if v is not None}
        if kind != CATALOGUE and not self.may_read(app_id, ask.device_id):
            log.warning("app %s may not read device %s (apps.readable); answered forbidden", app_id, ask.device_id)
            return error_reply("forbidden", f"this app may not read device {ask.device_id!r}", **known)
        try:
            self.db.connect(reuse_if_open=True)
            with self.gate.reading():
                reply = read()
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if not is_sqlite(self.db):
                self.db.close()  # the server may have gone: the next request takes a fresh connection
            log.error("cannot read %s data for %s: %s", kind, about, exc)
            return error_reply("unavailable", "the database cannot be read right now; try again", **known)
        if reply is None:
            log.warning("a %s reply for %s would not fit in %d bytes (the broker's maximum packet size); "
                        "answered too_large", kind, about, cap)
            return error_reply("too_large", f"not even one record fits in a reply of {cap} bytes, the most "
                                            "the broker takes on this reply topic", **known)
        return reply

    def latest(self, device: DeviceType, ask: Ask) -> bytes:
        row = device.latest_row(ask.device_id)
        date, records = None, []
        if row is not None:
            timestamp = row[-1]
            date = self.rules.site.local(timestamp)[:10]
            records = device.records([row], device.state_before(ask.device_id, date, timestamp))
        return self._reply(ask, date, len(records), orjson.dumps(records)[1:-1])

    def summary_page(self, device: DeviceType, ask: SummaryAsk, cap: int) -> bytes | None:
        """The buckets of a summary that fit in `cap` bytes, from the cursor's on; `next` if more."""
        starts = bucket_starts(ask.kind, ask.from_date, ask.to_date)
        if ask.start is not None:
            starts = starts[starts.index(ask.start):]
        page = starts[:max(1, cap // SMALLEST_BUCKET)]
        buckets = self.summaries.buckets(device, ask.device_id, ask.kind, page)
        head = {"device_id": ask.device_id, "summary": ask.kind, "from_date": ask.from_date, "to_date": ask.to_date}
        frame = len(splice({**head, "count": 0}, "buckets", b"", {"next": pack([device.name, ask.kind, starts[-1]]),
                                                                  "request_id": ask.request_id})) + 64
        encoded, n = cut(orjson.dumps(buckets), len(buckets), cap - frame)
        if not n:
            return None
        next_ = pack([device.name, ask.kind, starts[n]]) if n < len(starts) else None
        return splice({**head, "count": n}, "buckets", encoded, {"next": next_, "request_id": ask.request_id})

    def catalogue_page(self, ask: CatalogueAsk, app_id: str, cap: int) -> bytes | None:
        """The catalogue's entries after the cursor that fit in `cap` bytes; `next` if more."""
        fits = max(1, cap // SMALLEST_ENTRY)
        wanted = min(ask.limit or fits, fits)
        entries = self.catalogue.entries(ask, lambda device_id: self.may_read(app_id, device_id), wanted + 1)

        def cursor(entry):
            return pack(["devices", entry["type"], entry["device_id"]])
        longest = max(entries, key=lambda e: len(orjson.dumps(e["device_id"])), default=None)
        frame = len(splice({"count": 0}, "devices", b"", {"next": cursor(longest) if longest else None,
                                                          "request_id": ask.request_id})) + 64
        page = entries[:wanted]
        encoded, n = cut(orjson.dumps(page), len(page), cap - frame)
        if page and not n:
            return None
        next_ = cursor(entries[n - 1]) if len(entries) > n else None
        return splice({"count": n}, "devices", encoded, {"next": next_, "request_id": ask.request_id})

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
        frame = len(self._reply(ask, ask.date, 0, b"", encode_cursor(device, device.key(rows[0]), state)
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
        return self._reply(ask, ask.date, n, encoded, next_)

    def _rows(self, device: DeviceType, ask: Ask, after: tuple | None, limit: int) -> list[tuple]:
        """The day's rows past `after` within the request's time window. The window is in the site's
        time: where that is not what the timestamps say (site.timezone, devices sending an offset),
        the rest of the day is read and the window applied to each row's time at the site."""
        site = self.rules.site
        if site.zone is None or not (ask.start or ask.end):
            return device.rows(ask.device_id, ask.date, after, ask.start, ask.end, limit=limit)
        low, high = self._window(ask)
        rows = (row for row in device.rows(ask.device_id, ask.date, after) if low <= site.local(row[-1]) < high)
        return list(islice(rows, limit))

    def _state_before(self, device: DeviceType, ask: Ask) -> tuple:
        """What the first record carries in from earlier rows (see devices.Power)."""
        site = self.rules.site
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

    @staticmethod
    def _reply(ask: Ask, date: str | None, count: int, records: bytes, next_: str | None = None) -> bytes:
        """A day's reply: {"device_id", "date", "count", "records", "next"?, "request_id"?}."""
        return splice({"device_id": ask.device_id, "date": date, "count": count}, "records", records,
                      {"next": next_, "request_id": ask.request_id})


def splice(head: dict, key: str, items: bytes, tail: dict) -> bytes:
    """A reply's JSON, byte for byte what orjson makes of the dict {**head, key: [...], **tail} (tail
    entries that are None left out), around `items` already encoded (without the array's brackets)."""
    start = orjson.dumps(head)
    tail = {k: v for k, v in tail.items() if v is not None}
    end = b"," + orjson.dumps(tail)[1:] if tail else b"}"
    return b"".join((start[:-1], b',"', key.encode(), b'":[', items, b"]", end))


BETWEEN = b'},{"'  # only ever between two records: inside a JSON string a '"' is escaped


def cut(array: bytes, count: int, room: int) -> tuple[bytes, int]:
    """The first records of a JSON array of `count` objects (as orjson writes it) that take at
    most `room` bytes with a comma each, without the brackets; and how many they are."""
    if len(array) - 1 <= room:
        return array[1:-1], count
    end = array.rfind(BETWEEN, 0, room + len(BETWEEN) - 1)  # the '}' that ends the last one that fits
    if end < 0:
        return b"", 0
    # Those left out are counted: fewer, as a page reads little more than fits (QueryActor.page).
    return array[1:end + 1], count - 1 - array.count(BETWEEN, end + 1)
