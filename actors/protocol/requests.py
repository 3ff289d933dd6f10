"""The request protocol: what an app may ask (parsing into an `Ask`, with a specific error code
for anything else), the paging cursors (opaque to apps, checked completely when they come back),
and the error replies. Used by the MQTT link (refusals, request ids) and the query actors."""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime
from datetime import time as Time

import orjson

from actors.devices import DeviceType, DeviceTypes
from actors.devices.fields import InvalidMessage, parse_object, text_field
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.storage.summaries import bucket_count, bucket_starts

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
TIME = re.compile(r"\d{2}:\d{2}:\d{2}")
MAX_REQUEST_ID = 128


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


@dataclass(frozen=True)
class SummaryAsk:
    """A parsed summary request: buckets of `kind` from `from_date` to `to_date` (inclusive)."""
    device_id: str
    kind: str  # hour or day
    from_date: str
    to_date: str
    start: str | None = None  # from the cursor: the first bucket of this page
    request_id: str | None = None


@dataclass(frozen=True)
class CatalogueAsk:
    """A parsed catalogue request (home/getdevices/{app_id})."""
    type: str | None = None  # one device type, or all
    limit: int | None = None
    after: tuple[str, str] | None = None  # from the cursor: the last (type, device_id) sent
    request_id: str | None = None


SUMMARY_KINDS = ("hour", "day")
# The fields of each form of request: any other is refused (`unknown_field`), so that a typo such
# as "limt" is never silently a request for the whole day.
DAY_FIELDS = ("device_id", "date", "limit", "cursor", "from", "to", "request_id")
LATEST_FIELDS = ("device_id", "latest", "request_id")
SUMMARY_FIELDS = ("device_id", "summary", "from_date", "to_date", "cursor", "request_id")
CATALOGUE_FIELDS = ("type", "limit", "cursor", "request_id")
ALL_FIELDS = {*DAY_FIELDS, *LATEST_FIELDS, *SUMMARY_FIELDS}
CATALOGUE = "devices"  # what a request on home/getdevices/{app_id} asks for (in place of a device type)


def stems(types: DeviceTypes) -> dict[str, tuple[str, str]]:
    """What apps ask for, and where: request stem (apps ask on {stem}/{app_id}) and reply stem, by
    kind (a device type, or the catalogue)."""
    return {**{d.name: (d.request_stem, d.reply_stem) for d in types.values()},
            CATALOGUE: ("home/getdevices", "home/datadevices")}


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


def _object(payload: bytes) -> tuple[dict, dict]:
    """The request's object and what an error reply may echo of it, or RequestError."""
    try:
        obj = parse_object(payload)
    except InvalidMessage as exc:
        code = "invalid_json" if str(exc).startswith("not valid JSON") else "invalid_request"
        raise RequestError(code, str(exc)) from None
    known = _readable(obj)
    if "request_id" in obj and "request_id" not in known:
        raise RequestError("invalid_field", f"field 'request_id' must be a string of 1 to {MAX_REQUEST_ID} "
                                            "characters without control characters", **known)
    return obj, known


def _only(obj: dict, fields: tuple[str, ...], form: str, every: set[str], fail) -> None:
    """Refuse a field this form of request does not take: one another form takes is contradictory
    (`invalid_request`), any other is unknown (`unknown_field`, with the nearest known name)."""
    if not (extra := [k for k in obj if k not in fields]):
        return
    if contradicting := [k for k in extra if k in every]:
        fail("invalid_request", f"a {form} request takes no {', '.join(repr(k) for k in contradicting)}")
    name = extra[0]
    near = difflib.get_close_matches(name, fields, n=1) if isinstance(name, str) else []
    fail("unknown_field", f"unknown field {name!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
         + f"; a {form} request takes {', '.join(fields)}")


def _limit(obj: dict, fail) -> int | None:
    limit = obj.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        fail("invalid_field", f"field 'limit' must be a whole number from 1, got {limit!r}")
    return limit


def parse_request(payload: bytes, device: DeviceType, max_limit: int, max_buckets: int = 1000,
                  site: SiteTime = UNZONED) -> Ask | SummaryAsk:
    """The request as an Ask (or a SummaryAsk), or RequestError with a code for the app."""
    obj, known = _object(payload)

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
        _only(obj, LATEST_FIELDS, "latest", ALL_FIELDS, fail)
        return Ask(known["device_id"], latest=True, request_id=known.get("request_id"))
    if "summary" in obj:
        return _summary(obj, device, known, max_buckets, fail)
    _only(obj, DAY_FIELDS, "day", ALL_FIELDS, fail)
    if "date" not in obj:
        fail("missing_field", "missing field 'date'")
    value = obj["date"]
    if not _well_formed(value, DATE, Date.fromisoformat):
        fail("invalid_field", f"field 'date' must be a date as YYYY-MM-DD, got {value!r}")
    known["date"] = value
    limit = _limit(obj, fail)
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
            after, state = decode_cursor(obj["cursor"], device, value, site)
        except ValueError:
            fail("invalid_field", "field 'cursor' must be a `next` value from an earlier reply")
    return Ask(known["device_id"], value, limit=min(limit, max_limit) if limit else None, after=after,
               state=state, start=times.get("from"), end=times.get("to"), request_id=known.get("request_id"))


def _summary(obj: dict, device: DeviceType, known: dict, max_buckets: int, fail) -> SummaryAsk:
    kind = obj["summary"]
    if kind not in SUMMARY_KINDS:
        fail("invalid_field", f"field 'summary' must be one of {', '.join(SUMMARY_KINDS)}, got {kind!r}")
    _only(obj, SUMMARY_FIELDS, "summary", ALL_FIELDS, fail)
    dates = {}
    for name in ("from_date", "to_date"):
        if name not in obj:
            fail("missing_field", f"missing field {name!r}")
        if not _well_formed(obj[name], DATE, Date.fromisoformat):
            fail("invalid_field", f"field {name!r} must be a date as YYYY-MM-DD, got {obj[name]!r}")
        dates[name] = obj[name]
    if dates["from_date"] > dates["to_date"]:
        fail("invalid_request", f"from_date {dates['from_date']} is after to_date {dates['to_date']}")
    if (n := bucket_count(kind, dates["from_date"], dates["to_date"])) > max_buckets:
        fail("invalid_request", f"the range has {n} {kind} buckets, more than the {max_buckets} a summary may have "
                                "(queries.max_summary_buckets): ask for a shorter range, or by the day")
    start = None
    if "cursor" in obj:
        try:
            name, cursor_kind, start = unpack(obj["cursor"])
            if name != device.name or cursor_kind != kind \
                    or start not in bucket_starts(kind, dates["from_date"], dates["to_date"]):
                raise ValueError
        except ValueError:
            fail("invalid_field", "field 'cursor' must be a `next` value from an earlier reply")
    return SummaryAsk(known["device_id"], kind, dates["from_date"], dates["to_date"], start, known.get("request_id"))


def parse_catalogue(payload: bytes, types, max_limit: int) -> CatalogueAsk:
    """A request for the device catalogue, or RequestError."""
    obj, known = _object(payload)

    def fail(code, message):
        raise RequestError(code, message, **known)

    _only(obj, CATALOGUE_FIELDS, "catalogue", set(CATALOGUE_FIELDS), fail)
    kind = obj.get("type")
    if kind is not None and kind not in types:
        fail("invalid_field", f"field 'type' must be one of {', '.join(types)}, got {kind!r}")
    limit = _limit(obj, fail)
    after = None
    if "cursor" in obj:
        try:
            name, after_type, after_id = unpack(obj["cursor"])
            if name != "devices" or after_type not in types or not isinstance(after_id, str) \
                    or (kind is not None and after_type != kind):
                raise ValueError
            after = (after_type, after_id)
        except ValueError:
            fail("invalid_field", "field 'cursor' must be a `next` value from an earlier reply")
    return CatalogueAsk(kind, min(limit, max_limit) if limit else None, after, known.get("request_id"))


def pack(values: list) -> str:
    """A cursor: opaque to apps."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()


def unpack(text) -> list:
    """A cursor's values; ValueError unless it is one that pack() made."""
    try:
        if not isinstance(text, str) or len(text) > 1024:
            raise ValueError
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, orjson.JSONDecodeError, TypeError, ValueError):
        raise ValueError from None
    if not isinstance(values, list):
        raise ValueError
    return values


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
    return pack([device.name, list(key), list(state)])


def decode_cursor(text, device: DeviceType, date: str, site: SiteTime = UNZONED) -> tuple[tuple, tuple]:
    """(key, state) of a cursor; ValueError unless it is one of ours for this device type and
    day (in the site's calendar): every value is checked as the column holds it, so nothing an app
    makes up reaches SQL."""
    values = unpack(text)
    if len(values) != 3:
        raise ValueError
    name, key, state = values
    if name != device.name or not isinstance(key, list) or not isinstance(state, list) \
            or len(key) != 1 + len(device.value_columns):
        raise ValueError
    timestamp, *values = key
    if not isinstance(timestamp, str):
        raise ValueError
    try:
        canonical = datetime.fromisoformat(timestamp).isoformat()
    except ValueError:
        raise ValueError from None
    if canonical != timestamp or site.local(timestamp)[:10] != date:
        raise ValueError
    return (timestamp, *device.cursor_values(values)), device.cursor_state(state)


def error_reply(code: str, message: str, **known) -> dict:
    return {**known, "error": {"code": code, "message": message}}


def error_code(reply: bytes) -> str:
    """The code of an error reply (as error_reply makes it, encoded)."""
    return orjson.loads(reply)["error"]["code"]


# In a request too large to parse, the fields an error reply echoes are looked for as plain strings.
ECHOED = ("request_id", "device_id", "date")
_ECHO_PATTERN = {name: re.compile(rb'"%s"\s*:\s*"([^"\\]{1,512})"' % name.encode()) for name in ECHOED}


def known_in(payload: bytes, max_bytes: int) -> dict:
    """request_id, device_id and date of a raw request, as far as they are readable and valid, for
    an error reply. A payload over `max_bytes` (limits.max_request_bytes) is not parsed: only its
    first `max_bytes` are searched for them."""
    if len(payload) <= max_bytes:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
    else:
        head = payload[:max_bytes]
        obj = {name: m.group(1).decode("utf-8", "replace") for name, p in _ECHO_PATTERN.items()
               if (m := p.search(head))}
    return _readable(obj) if isinstance(obj, dict) else {}


def _readable(obj: dict) -> dict:
    """The request's request_id, device_id and date, each if it is there and valid."""
    known = {}
    if (request_id := request_id_of(obj)) is not None:
        known["request_id"] = request_id
    try:
        known["device_id"] = text_field(obj, "device_id")
    except InvalidMessage:
        pass
    if _well_formed(obj.get("date"), DATE, Date.fromisoformat):
        known["date"] = obj["date"]
    return known


def with_known(body: dict, payload: bytes, max_bytes: int) -> dict:
    """An error reply with what could be read of the request it answers."""
    return {**known_in(payload, max_bytes), **body}


def internal_error(payload: bytes, max_bytes: int) -> dict:
    """The reply to a request the service failed to answer (what could be read of it echoed)."""
    return with_known(error_reply("internal_error", "the service failed to answer this request; it has "
                                                         "been logged"), payload, max_bytes)
