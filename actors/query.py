"""A query actor: answers an app's request for one device-day over its own read-only
connection. Several run side by side (a pool); WAL lets them read while the writer writes."""

from __future__ import annotations

import logging
import re
from datetime import date as Date
from fnmatch import fnmatchcase

import orjson
import peewee

from actors.devices import DEVICE_TYPES, InvalidMessage, parse_object, text_field
from actors.messages import Reply, Request
from actors.peers import Peers, Supervised
from actors.readgate import ReadGate

log = logging.getLogger(__name__)
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class RequestError(Exception):
    def __init__(self, code: str, message: str, **known):
        super().__init__(message)
        self.code = code
        self.known = known  # device_id / date when they were readable


def parse_request(payload: bytes) -> tuple[str, str]:
    """(device_id, date) of a request, or RequestError with a code for the app."""
    try:
        obj = parse_object(payload)
    except InvalidMessage as exc:
        code = "invalid_json" if str(exc).startswith("not valid JSON") else "invalid_request"
        raise RequestError(code, str(exc)) from None
    known = {}
    for name in ("device_id", "date"):
        if name not in obj:
            raise RequestError("missing_field", f"missing field {name!r}", **known)
        if name == "device_id":
            try:
                known["device_id"] = text_field(obj, "device_id")
            except InvalidMessage as exc:
                raise RequestError("invalid_field", str(exc)) from None
    value = obj["date"]
    try:
        if not isinstance(value, str) or not DATE.fullmatch(value):
            raise ValueError
        Date.fromisoformat(value)
    except ValueError:
        raise RequestError("invalid_field", f"field 'date' must be a date as YYYY-MM-DD, got {value!r}",
                           **known) from None
    return known["device_id"], value


def error_reply(code: str, message: str, **known) -> dict:
    return {**known, "error": {"code": code, "message": message}}


class QueryActor(Supervised):
    def __init__(self, index: int, database: peewee.Database, peers: Peers, max_bytes: int,
                 supervisor=None, gate: ReadGate | None = None, readable: dict | None = None):
        super().__init__(f"query/{index}", supervisor)
        self.db = database
        self.peers = peers
        self.max_bytes = max_bytes
        self.gate = gate or ReadGate()
        self.readable = readable or {}  # app-id glob -> device-id globs; empty: all may read all

    def on_start(self):
        self.db.connect(reuse_if_open=True)
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
        device = DEVICE_TYPES[message.device]
        body = self.answer(message.device, message.payload, message.app_id)
        topic = f"{device.reply_stem}/{message.app_id}"
        self.peers.tell("link", Reply(message.ack_id, topic, orjson.dumps(body), error="error" in body))

    def may_read(self, app_id: str, device_id: str) -> bool:
        """Globs match literally otherwise: fnmatchcase, so case matters and '/' is no separator."""
        if not self.readable:
            return True
        return any(fnmatchcase(app_id, apps) and any(fnmatchcase(device_id, d) for d in devices)
                   for apps, devices in self.readable.items())

    def answer(self, device_name: str, payload: bytes, app_id: str = "") -> dict:
        if len(payload) > self.max_bytes:
            log.info("refused a %s request of %d bytes", device_name, len(payload))
            return error_reply("too_large", f"the request is {len(payload)} bytes, over the "
                                            f"{self.max_bytes}-byte limit")
        try:
            device_id, date = parse_request(payload)
        except RequestError as exc:
            log.info("bad %s request: %s", device_name, exc)
            return error_reply(exc.code, str(exc), **exc.known)
        if not self.may_read(app_id, device_id):
            log.warning("app %s may not read device %s (apps.readable); answered forbidden", app_id, device_id)
            return error_reply("forbidden", f"this app may not read device {device_id!r}",
                               device_id=device_id, date=date)
        try:
            with self.gate.reading():
                records = DEVICE_TYPES[device_name].day_records(device_id, date)
        except peewee.OperationalError as exc:
            log.error("cannot read %s data for %s on %s: %s", device_name, device_id, date, exc)
            return error_reply("unavailable", "the database cannot be read right now; try again",
                               device_id=device_id, date=date)
        return {"device_id": device_id, "date": date, "count": len(records), "records": records}
