"""A query actor: answers an app's request for a device-day (or its latest reading) over its own
read-only connection. Several run side by side (a pool); WAL lets them read while the writer
writes.

A request the seed describes ({"device_id", "date"}) gets the seed's reply, whole, as long as
it fits `queries.max_reply_bytes`; a larger day, or a request with `limit`, gets a page and a
`next` cursor. A cursor is the last record's place in the index order (and, for power, the
state carried to it), so pages neither skip nor repeat records while new readings arrive."""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import datetime
from datetime import time as Time
from fnmatch import fnmatchcase
from itertools import accumulate

import orjson
import peewee

from actors.devices import DEVICE_TYPES, DeviceType, InvalidMessage, parse_object, text_field
from actors.messages import Reply, Request
from actors.models import is_sqlite
from actors.peers import Peers, Supervised
from actors.readgate import ReadGate

log = logging.getLogger(__name__)
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME = re.compile(r"\d{2}:\d{2}:\d{2}")
MAX_REQUEST_ID = 128
SMALLEST_RECORD = 50  # bytes of JSON: bounds how many rows a page can need


@dataclass(frozen=True)
class QueryRules:
    max_request_bytes: int = 4096
    max_reply_bytes: int = 100_000
    max_page_records: int = 1000  # the most a `limit` may ask for
    readable: dict = field(default_factory=dict)  # app-id glob -> device-id globs; empty: all


@dataclass(frozen=True)
class Ask:
    """A parsed request."""
    device_id: str
    date: str | None = None  # None with latest
    latest: bool = False
    limit: int | None = None
    after: tuple | None = None  # from the cursor: the last record sent ...
    state: tuple = ()  # ... and what records carry past it
    start: str | None = None  # "from", HH:MM:SS
    end: str | None = None  # "to", HH:MM:SS
    request_id: str | None = None


class RequestError(Exception):
    def __init__(self, code: str, message: str, **known):
        super().__init__(message)
        self.code = code
        self.known = known  # request_id / device_id / date when they were readable


def request_id_of(obj) -> str | None:
    """The request's `request_id` when it is a usable one (it is echoed in every reply)."""
    value = obj.get("request_id") if isinstance(obj, dict) else None
    if isinstance(value, str) and 0 < len(value) <= MAX_REQUEST_ID and not any(ord(c) < 32 for c in value):
        return value
    return None


def parse_request(payload: bytes, device: DeviceType, max_limit: int) -> Ask:
    """The request as an Ask, or RequestError with a code for the app."""
    try:
        obj = parse_object(payload)
    except InvalidMessage as exc:
        code = "invalid_json" if str(exc).startswith("not valid JSON") else "invalid_request"
        raise RequestError(code, str(exc)) from None
    known = {}
    if "request_id" in obj:
        if (request_id := request_id_of(obj)) is None:
            raise RequestError("invalid_field", f"field 'request_id' must be a string of 1 to {MAX_REQUEST_ID} "
                                                "characters without control characters")
        known["request_id"] = request_id

    def fail(code, message):
        raise RequestError(code, message, **known)

    if "device_id" not in obj:
        fail("missing_field", "missing field 'device_id'")
    try:
        known["device_id"] = text_field(obj, "device_id")
    except InvalidMessage as exc:
        fail("invalid_field", str(exc))
    if "latest" in obj:
        if obj["latest"] is not True:
            fail("invalid_field", "field 'latest' can only be true")
        if extra := [k for k in ("date", "limit", "cursor", "from", "to") if k in obj]:
            fail("invalid_request", f"a latest request takes no {', '.join(repr(k) for k in extra)}")
        return Ask(known["device_id"], latest=True, request_id=known.get("request_id"))
    if "date" not in obj:
        fail("missing_field", "missing field 'date'")
    value = obj["date"]
    if not _well_formed(value, DATE, Date.fromisoformat):
        fail("invalid_field", f"field 'date' must be a date as YYYY-MM-DD, got {value!r}")
    known["date"] = value
    limit = obj.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        fail("invalid_field", f"field 'limit' must be a whole number from 1, got {limit!r}")
    times = {}
    for name in ("from", "to"):
        text = obj.get(name)
        if text is None:
            continue
        if not _well_formed(text, TIME, Time.fromisoformat):
            fail("invalid_field", f"field {name!r} must be a time of day as HH:MM:SS, got {text!r}")
        times[name] = text
    after, state = None, ()
    if "cursor" in obj:
        try:
            after, state = decode_cursor(obj["cursor"], device, value)
        except ValueError:
            fail("invalid_field", "field 'cursor' must be a `next` value from an earlier reply")
    return Ask(known["device_id"], value, limit=min(limit, max_limit) if limit else None, after=after,
               state=state, start=times.get("from"), end=times.get("to"), request_id=known.get("request_id"))


def _well_formed(value, pattern: re.Pattern, parse) -> bool:
    """A string in exactly that format, naming a real date or time (no 2026-02-30, no 24:00:00)."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return False
    try:
        parse(value)
    except ValueError:
        return False
    return True


def encode_cursor(device: DeviceType, key: tuple, state: tuple) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([device.name, list(key), list(state)])).rstrip(b"=").decode()


def decode_cursor(text, device: DeviceType, date: str) -> tuple[tuple, tuple]:
    """(key, state) of a cursor; ValueError unless it is one of ours for this device type and
    day: every value is checked as the column holds it, so nothing an app makes up reaches SQL."""
    try:
        if not isinstance(text, str) or len(text) > 1024:
            raise ValueError
        name, key, state = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise ValueError from None
    if name != device.name or not isinstance(key, list) or not isinstance(state, list) \
            or len(key) != 1 + len(device.value_columns):
        raise ValueError
    timestamp, *values = key
    if not isinstance(timestamp, str) or timestamp[:10] != date:
        raise ValueError
    try:
        canonical = datetime.fromisoformat(timestamp).isoformat()
    except ValueError:
        raise ValueError from None
    if canonical != timestamp:
        raise ValueError
    return (timestamp, *device.cursor_values(values)), device.cursor_state(state)


def error_reply(code: str, message: str, **known) -> dict:
    return {**known, "error": {"code": code, "message": message}}


def request_id_in(payload: bytes, max_bytes: int) -> str | None:
    """The request_id of a raw request, for an error reply, if it is readable: a payload over
    `max_bytes` (limits.max_request_bytes) is not even parsed."""
    if len(payload) > max_bytes:
        return None
    try:
        return request_id_of(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return None


def with_request_id(body: dict, payload: bytes, max_bytes: int) -> dict:
    request_id = request_id_in(payload, max_bytes)
    return body if request_id is None else {"request_id": request_id, **body}


def internal_error(payload: bytes, max_bytes: int) -> dict:
    """The reply to a request the service failed to answer (its request_id echoed if readable)."""
    return with_request_id(error_reply("internal_error", "the service failed to answer this request; it has "
                                                         "been logged"), payload, max_bytes)


class QueryActor(Supervised):
    def __init__(self, index: int, database: peewee.Database, peers: Peers, rules: QueryRules,
                 supervisor=None, gate: ReadGate | None = None):
        super().__init__(f"query/{index}", supervisor)
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
        self.suspects = (message.ack_id,)  # named to the supervisor if this crashes the actor
        try:
            body = self.answer(message.device, message.payload, message.app_id, message.max_bytes)
        except Exception:  # noqa: BLE001 - a bug must cost one error reply, not the actor
            log.exception("%s failed to answer a %s request on %s (payload %r); answered internal_error",
                          self.name, message.device, message.reply_topic, message.payload[:512])
            body = internal_error(message.payload, self.rules.max_request_bytes)
        self.peers.tell("link", Reply(message.ack_id, orjson.dumps(body), error="error" in body))
        self.suspects = ()

    def may_read(self, app_id: str, device_id: str) -> bool:
        """Globs match literally otherwise: fnmatchcase, so case matters and '/' is no separator."""
        if not self.rules.readable:
            return True
        return any(fnmatchcase(app_id, apps) and any(fnmatchcase(device_id, d) for d in devices)
                   for apps, devices in self.rules.readable.items())

    def answer(self, device_name: str, payload: bytes, app_id: str = "", max_bytes: int | None = None) -> dict:
        """The reply to a request, at most `max_bytes` of JSON (what the broker takes) and
        `queries.max_reply_bytes`."""
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

    def latest(self, device: DeviceType, ask: Ask) -> dict:
        row = device.latest_row(ask.device_id)
        date, records = None, []
        if row is not None:
            timestamp = row[-1]
            date = timestamp[:10]
            records = device.records([row], device.state_before(ask.device_id, date, timestamp))
        return self._reply(ask, date, records)

    def page(self, device: DeviceType, ask: Ask, cap: int) -> dict | None:
        """One page: `limit` records, or as many as fit in `cap` bytes; `next` if more. None if
        not even one record fits."""
        fits = max(1, cap // SMALLEST_RECORD)
        wanted = min(ask.limit or fits, fits)
        rows = device.rows(ask.device_id, ask.date, ask.after, ask.start, ask.end, limit=wanted + 1)
        state = ask.state if ask.after else device.state_before(
            ask.device_id, ask.date, f"{ask.date}T{ask.start}" if ask.start else None)
        records = device.records(rows[:wanted], state)
        # The most records that keep the reply under the cap (room is left for `next`).
        frame = len(orjson.dumps(self._reply(ask, ask.date, [], next_=encode_cursor(device, device.key(rows[0]), state)
                                             if rows else None))) + 64
        sizes = accumulate(len(orjson.dumps(r)) + 1 for r in records)
        n = sum(1 for total in sizes if frame + total <= cap)
        if records and not n:
            return None
        more = len(rows) > n
        next_ = encode_cursor(device, device.key(rows[n - 1]), device.state_after(records[n - 1])) if more else None
        return self._reply(ask, ask.date, records[:n], next_)

    @staticmethod
    def _reply(ask: Ask, date: str | None, records: list[dict], next_: str | None = None) -> dict:
        reply = {"device_id": ask.device_id, "date": date, "count": len(records), "records": records}
        if next_ is not None:
            reply["next"] = next_
        if ask.request_id is not None:
            reply["request_id"] = ask.request_id
        return reply
