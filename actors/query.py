"""A query actor: answers an app's request for a device-day (or its latest reading), a summary
(summaries.py) or the device catalogue (catalogue.py) over its own read-only connection. Several run
side by side (a pool); WAL lets them read while the writer writes.

A request the seed describes ({"device_id", "date"}) gets the seed's reply, whole, as long as
it fits `queries.max_reply_bytes`; a larger day, or a request with `limit`, gets a page and a
`next` cursor (days.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import orjson
import peewee

from actors.devices import BUILTIN_TYPES, DeviceType, DeviceTypes
from actors.protocol.messages import Reply, Request
from actors.protocol.replies import cut, splice
from actors.protocol.requests import (
    CATALOGUE,
    CatalogueAsk,
    RequestError,
    SummaryAsk,
    error_reply,
    internal_error,
    pack,
    parse_catalogue,
    parse_request,
)
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.runtime.peers import LINK, Peers
from actors.runtime.supervised import Supervised
from actors.storage.catalogue import CatalogueReader
from actors.storage.days import DayPages
from actors.storage.models import is_sqlite
from actors.storage.readgate import ReadGate
from actors.storage.summaries import Summaries, bucket_starts

log = logging.getLogger(__name__)
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
    types: DeviceTypes = field(default_factory=lambda: BUILTIN_TYPES)  # what apps may ask about
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
        self.days = DayPages(rules.site)
        self.catalogue = CatalogueReader(database, set(rules.live_types), rules.types)

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
                ask = parse_catalogue(payload, tuple(self.rules.types), self.rules.max_page_records)
                known, about = {"request_id": ask.request_id}, "the catalogue"
                read = lambda: self.catalogue_page(ask, app_id, cap)  # noqa: E731
            else:
                device = self.rules.types[kind]
                ask = parse_request(payload, device, self.rules.max_page_records, self.rules.max_summary_buckets,
                                    self.rules.site)
                known, about = {"request_id": ask.request_id, "device_id": ask.device_id}, ask.device_id
                if isinstance(ask, SummaryAsk):
                    read = lambda: self.summary_page(device, ask, cap)  # noqa: E731
                else:
                    known["date"] = ask.date
                    read = lambda: self.days.latest(device, ask) if ask.latest else self.days.page(device, ask, cap)  # noqa: E731
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
