"""A query actor: answers an app's request for a device-day (or its latest reading) over its own
read-only connection. Several run side by side (a pool); WAL lets them read while the writer
writes.

A request the seed describes ({"device_id", "date"}) gets the seed's reply, whole, as long as
it fits `queries.max_reply_bytes`; a larger day, or a request with `limit`, gets a page and a
`next` cursor. A cursor is the last record's place in the index order (and, for power, the
state carried to it), so pages neither skip nor repeat records while new readings arrive."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import orjson
import peewee

from actors.devices import DEVICE_TYPES, DeviceType
from actors.messages import Reply, Request
from actors.models import is_sqlite
from actors.peers import LINK, Peers, Supervised
from actors.readgate import ReadGate
from actors.requests import Ask, RequestError, encode_cursor, error_reply, internal_error, parse_request

log = logging.getLogger(__name__)
SMALLEST_RECORD = 50  # bytes of JSON: bounds how many rows a page can need


@dataclass(frozen=True)
class QueryRules:
    max_request_bytes: int = 4096
    max_reply_bytes: int = 100_000
    max_page_records: int = 1000  # the most a `limit` may ask for
    readable: dict = field(default_factory=dict)  # app-id glob -> device-id globs; empty: all


class QueryActor(Supervised):
    def __init__(self, name: str, database: peewee.Database, peers: Peers, rules: QueryRules,
                 supervisor=None, gate: ReadGate | None = None, marks=None):
        super().__init__(name, supervisor, marks)
        self.db = database
        self.peers = peers
        self.rules = rules
        self.gate = gate or ReadGate()

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

    def answer(self, device_name: str, payload: bytes, app_id: str = "", max_bytes: int | None = None) -> bytes | dict:
        """The reply to a request, at most `max_bytes` of JSON (what the broker takes) and
        `queries.max_reply_bytes`: the data as JSON, or an error reply (a dict)."""
        device = DEVICE_TYPES[device_name]
        if len(payload) > self.rules.max_request_bytes:
            log.info("refused a %s request of %d bytes", device_name, len(payload))
            return error_reply("too_large", f"the request is {len(payload)} bytes, over the "
                                            f"{self.rules.max_request_bytes}-byte limit")
        try:
            ask = parse_request(payload, device, self.rules.max_page_records)
        except RequestError as exc:
            log.info("bad %s request: %s", device_name, exc)
            return error_reply(exc.code, str(exc), **exc.known)
        known = {k: v for k, v in (("request_id", ask.request_id), ("device_id", ask.device_id),
                                   ("date", ask.date)) if v is not None}
        if not self.may_read(app_id, ask.device_id):
            log.warning("app %s may not read device %s (apps.readable); answered forbidden", app_id, ask.device_id)
            return error_reply("forbidden", f"this app may not read device {ask.device_id!r}", **known)
        try:
            self.db.connect(reuse_if_open=True)
            cap = min(self.rules.max_reply_bytes, max_bytes or self.rules.max_reply_bytes)
            with self.gate.reading():
                reply = self.latest(device, ask) if ask.latest else self.page(device, ask, cap)
        except (peewee.OperationalError, peewee.InterfaceError) as exc:
            if not is_sqlite(self.db):
                self.db.close()  # the server may have gone: the next request takes a fresh connection
            log.error("cannot read %s data for %s: %s", device_name, ask.device_id, exc)
            return error_reply("unavailable", "the database cannot be read right now; try again", **known)
        if reply is None:
            log.warning("a %s reply for %s would not fit in %d bytes (the broker's maximum packet size); "
                        "answered too_large", device_name, ask.device_id, cap)
            return error_reply("too_large", f"not even one record fits in a reply of {cap} bytes, the most "
                                            "the broker takes on this reply topic", **known)
        return reply

    def latest(self, device: DeviceType, ask: Ask) -> bytes:
        row = device.latest_row(ask.device_id)
        date, records = None, []
        if row is not None:
            timestamp = row[-1]
            date = timestamp[:10]
            records = device.records([row], device.state_before(ask.device_id, date, timestamp))
        return self._reply(ask, date, len(records), orjson.dumps(records)[1:-1])

    def page(self, device: DeviceType, ask: Ask, cap: int) -> bytes | None:
        """One page: `limit` records, or as many as fit in `cap` bytes; `next` if more. None if
        not even one record fits."""
        fits = max(1, cap // SMALLEST_RECORD)
        wanted = min(ask.limit or fits, fits)
        rows = device.rows(ask.device_id, ask.date, ask.after, ask.start, ask.end, limit=wanted + 1)
        state = ask.state if ask.after else device.state_before(
            ask.device_id, ask.date, f"{ask.date}T{ask.start}" if ask.start else None)
        records = device.records(rows[:wanted], state)
        # The most records that keep the reply under the cap (room is left for `next`), cut from
        # one encoding of them all: a call per record cost ten times as much.
        frame = len(self._reply(ask, ask.date, 0, b"", encode_cursor(device, device.key(rows[0]), state)
                                if rows else None)) + 64
        encoded, n = cut(orjson.dumps(records), len(records), cap - frame)
        if records and not n:
            return None
        more = len(rows) > n
        next_ = encode_cursor(device, device.key(rows[n - 1]), device.state_after(records[n - 1])) if more else None
        return self._reply(ask, ask.date, n, encoded, next_)

    @staticmethod
    def _reply(ask: Ask, date: str | None, count: int, records: bytes, next_: str | None = None) -> bytes:
        """The reply's JSON, byte for byte what orjson makes of the dict {"device_id", "date",
        "count", "records", "next"?, "request_id"?}, around `records` already encoded (without
        the array's brackets)."""
        head = orjson.dumps({"device_id": ask.device_id, "date": date, "count": count})
        tail = {k: v for k, v in (("next", next_), ("request_id", ask.request_id)) if v is not None}
        end = b"," + orjson.dumps(tail)[1:] if tail else b"}"
        return b"".join((head[:-1], b',"records":[', records, b"]", end))


BETWEEN = b'},{"'  # only ever between two records: inside a JSON string a '"' is escaped


def cut(array: bytes, count: int, room: int) -> tuple[bytes, int]:
    """The first records of a JSON array of `count` objects (as orjson writes it) that take at
    most `room` bytes with a comma each, without the brackets; and how many they are."""
    if len(array) - 1 <= room:
        return array[1:-1], count
    end = array.rfind(BETWEEN, 0, room + len(BETWEEN) - 1)  # the '}' that ends the last one that fits
    if end < 0:
        return b"", 0
    return array[1:end + 1], array.count(BETWEEN, 0, end + len(BETWEEN))
