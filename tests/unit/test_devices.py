"""Validation of readings and requests: every device type, every kind of bad input."""

import base64
import json

import pytest

from actors.devices import BUILTIN_TYPES, InvalidMessage
from actors.protocol.requests import Ask, RequestError, encode_cursor, known_in, parse_catalogue, parse_request

TEMP, POWER, FINGER = BUILTIN_TYPES["temperature"], BUILTIN_TYPES["power"], BUILTIN_TYPES["fingerprint"]


def raw(obj) -> bytes:
    return json.dumps(obj).encode()


def test_the_seed_examples_become_rows():
    assert TEMP.parse(raw({"device_id": "temp_sensor_01", "temperature": 22.5, "humidity": 45.3,
                           "status": "HIGH", "timestamp": "2026-01-22T14:30:00"})) == \
        ("temp_sensor_01", 22.5, 45.3, "HIGH", "2026-01-22T14:30:00", "2026-01-22")
    assert POWER.parse(raw({"device_id": "power_switch_01", "status": "EB_ON",
                            "timestamp": "2026-01-22T14:35:15"})) == \
        ("power_switch_01", "ON", "", "2026-01-22T14:35:15", "2026-01-22")
    assert FINGER.parse(raw({"device_id": "fingerprint_01", "user_id": "user_123", "authStatus": "PASS",
                             "timestamp": "2026-01-22T14:40:22"})) == \
        ("fingerprint_01", "user_123", "PASS", "2026-01-22T14:40:22", "2026-01-22")


@pytest.mark.parametrize("status, columns", [("EB_ON", ("ON", "")), ("EB_OFF", ("OFF", "")),
                                             ("DG_ON", ("", "ON")), ("DG_OFF", ("", "OFF"))])
def test_a_power_row_keeps_only_what_the_device_said(status, columns):
    row = POWER.parse(raw({"device_id": "p", "status": status, "timestamp": "2026-01-22T00:00:00"}))
    assert row[1:3] == columns


@pytest.mark.parametrize("given, stored, date", [
    ("2026-01-22T14:30:00", "2026-01-22T14:30:00", "2026-01-22"),
    ("2026-01-22 14:30:00", "2026-01-22T14:30:00", "2026-01-22"),
    ("2026-01-22T14:30:00.250", "2026-01-22T14:30:00.250000", "2026-01-22"),
    ("2026-01-22T23:30:00+05:30", "2026-01-22T23:30:00+05:30", "2026-01-22"),
    ("2026-01-22T14:30:00Z", "2026-01-22T14:30:00+00:00", "2026-01-22"),
])
def test_timestamps_are_stored_in_canonical_form_with_their_own_date(given, stored, date):
    row = FINGER.parse(raw({"device_id": "f", "user_id": "u", "authStatus": "FAIL", "timestamp": given}))
    assert row[-2:] == (stored, date)


GOOD_TEMP = {"device_id": "t", "temperature": 22.5, "humidity": 45.3, "status": "HIGH",
             "timestamp": "2026-01-22T14:30:00"}


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2, 3]", "expected a JSON object, got an array"),
    (b'"text"', "expected a JSON object, got a string"),
    (raw({k: v for k, v in GOOD_TEMP.items() if k != "device_id"}), "missing field 'device_id'"),
    (raw({**GOOD_TEMP, "device_id": 17}), "field 'device_id' must be a string, got a number"),
    (raw({**GOOD_TEMP, "device_id": "  "}), "field 'device_id' must not be empty"),
    (raw({**GOOD_TEMP, "device_id": "x" * 129}), "longer than 128"),
    (raw({**GOOD_TEMP, "device_id": "a\nb"}), "control characters"),
    (raw({**GOOD_TEMP, "temperature": "abc"}), "field 'temperature' must be a number, got a string"),
    (raw({**GOOD_TEMP, "temperature": True}), "field 'temperature' must be a number, got a boolean"),
    (raw({**GOOD_TEMP, "temperature": None}), "field 'temperature' must be a number, got null"),
    (b'{"device_id": "t", "temperature": 1e400, "humidity": 1, "status": "HIGH", '
     b'"timestamp": "2026-01-22T14:30:00"}', "not valid JSON"),
    (raw({**GOOD_TEMP, "temperature": 10 ** 400}), "not valid JSON: number is infinity"),
    (raw({**GOOD_TEMP, "humidity": 101}), "field 'humidity' must be between 0 and 100"),
    (raw({**GOOD_TEMP, "status": "MEDIUM"}), "field 'status' must be one of HIGH, LOW, got 'MEDIUM'"),
    (raw({**GOOD_TEMP, "timestamp": "yesterday"}), "field 'timestamp' must be an ISO 8601 date-time"),
    (raw({**GOOD_TEMP, "timestamp": "2026-01-22"}), "field 'timestamp' must be an ISO 8601 date-time"),
    (raw({**GOOD_TEMP, "timestamp": "2026-02-30T10:00:00"}), "field 'timestamp' must be an ISO 8601"),
    (raw({**GOOD_TEMP, "timestamp": 1769092200}), "field 'timestamp' must be a string, got a number"),
])
def test_bad_temperature_readings_are_refused_with_a_specific_reason(payload, reason):
    with pytest.raises(InvalidMessage) as err:
        TEMP.parse(payload)
    assert reason in str(err.value)


def test_bad_power_and_fingerprint_readings_are_refused_with_a_specific_reason():
    with pytest.raises(InvalidMessage, match="'status' must be one of EB_ON, EB_OFF, DG_ON, DG_OFF"):
        POWER.parse(raw({"device_id": "p", "status": "XX_ON", "timestamp": "2026-01-22T14:30:00"}))
    with pytest.raises(InvalidMessage, match="'authStatus' must be one of PASS, FAIL, got 'MAYBE'"):
        FINGER.parse(raw({"device_id": "f", "user_id": "u", "authStatus": "MAYBE",
                          "timestamp": "2026-01-22T14:30:00"}))
    with pytest.raises(InvalidMessage, match="missing field 'user_id'"):
        FINGER.parse(raw({"device_id": "f", "authStatus": "PASS", "timestamp": "2026-01-22T14:30:00"}))


def test_extra_fields_in_a_reading_are_ignored():
    row = TEMP.parse(raw({**GOOD_TEMP, "battery": 87}))
    assert row[0] == "t"


def test_a_good_request_reads_device_and_date():
    assert parse_request(raw({"device_id": "temp_sensor_01", "date": "2026-01-22"}), TEMP, 1000) == \
        Ask("temp_sensor_01", "2026-01-22")


def test_the_optional_fields_of_a_request():
    cursor = encode_cursor(TEMP, ("2026-01-22T10:00:00", 21.5, 40.0, "LOW"), ())
    ask = parse_request(raw({"device_id": "t", "date": "2026-01-22", "limit": 5000, "cursor": cursor,
                             "from": "08:00:00", "to": "18:30:00", "request_id": "r-1"}), TEMP, 1000)
    assert ask == Ask("t", "2026-01-22", limit=1000, after=("2026-01-22T10:00:00", 21.5, 40.0, "LOW"),
                      start="08:00:00", end="18:30:00", request_id="r-1")  # limit capped by the setting
    assert parse_request(raw({"device_id": "t", "latest": True}), TEMP, 1000) == Ask("t", latest=True)


@pytest.mark.parametrize("payload, code, known", [
    (b"{not json", "invalid_json", {}),
    (raw(["temp_sensor_01", "2026-01-22"]), "invalid_request", {}),
    (raw({"date": "2026-01-22"}), "missing_field", {"date": "2026-01-22"}),
    (raw({"device_id": "t1"}), "missing_field", {"device_id": "t1"}),
    (raw({"device_id": 5, "date": "2026-01-22"}), "invalid_field", {"date": "2026-01-22"}),
    (raw({"device_id": "t1", "date": "22-01-2026"}), "invalid_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": "2026-02-30"}), "invalid_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": 20260122}), "invalid_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": "2026-1-2"}), "invalid_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "request_id": "r", "limit": 0}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22", "request_id": "r"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "limit": True}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "from": "8:00"}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "to": "24:00:00"}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "cursor": "bm90IG91cnM"}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "latest": True, "date": "2026-01-22"}), "invalid_request",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "latest": True, "summary": "day"}), "invalid_request", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "limt": 10}), "unknown_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "summary": "day", "from_date": "2026-01-01", "to_date": "2026-01-02", "tz": "UTC"}),
     "unknown_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "latest": True, "fields": ["temperature"]}), "unknown_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "latest": "yes"}), "invalid_field", {"device_id": "t1"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "request_id": ""}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
    (raw({"device_id": "t1", "date": "2026-01-22", "request_id": "x" * 129}), "invalid_field",
     {"device_id": "t1", "date": "2026-01-22"}),
])
def test_bad_requests_carry_a_code_and_what_was_readable(payload, code, known):
    with pytest.raises(RequestError) as err:
        parse_request(payload, TEMP, 1000)
    assert err.value.code == code and err.value.known == known and str(err.value)


def test_an_unknown_field_is_named_with_the_nearest_known_one():
    with pytest.raises(RequestError) as err:
        parse_request(raw({"device_id": "t1", "date": "2026-01-22", "limt": 10}), TEMP, 1000)
    assert str(err.value).startswith("unknown field 'limt' (did you mean 'limit'?)")
    with pytest.raises(RequestError) as err:
        parse_catalogue(raw({"type": "power", "device_id": "p1"}), ("temperature", "power"), 100)
    assert err.value.code == "unknown_field" and "'device_id'" in str(err.value)


@pytest.mark.parametrize("payload, known", [
    (raw({"device_id": "t1", "date": "2026-01-22", "request_id": "r1"}),
     {"device_id": "t1", "date": "2026-01-22", "request_id": "r1"}),
    (raw({"device_id": "t1", "date": "2026-02-30", "request_id": 7}), {"device_id": "t1"}),
    (b"{not json", {}),
    (raw(["t1"]), {}),
    # Over the size limit: not parsed, its head searched for the three fields.
    (raw({"request_id": "big-1", "device_id": "t1", "date": "2026-01-22", "x": "y" * 10_000}),
     {"request_id": "big-1", "device_id": "t1", "date": "2026-01-22"}),
    (raw({"x": "y" * 10_000, "request_id": "too-far"}), {}),
])
def test_an_error_reply_echoes_what_could_be_read_of_any_request(payload, known):
    assert known_in(payload, 4096) == known


def forged(*parts) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).rstrip(b"=").decode()


GOOD_KEYS = {"temperature": ["2026-01-22T10:00:00", 21.5, 40.0, "LOW"], "power": ["2026-01-22T10:00:00", "ON", ""],
             "fingerprint": ["2026-01-22T10:00:00", "u1", "PASS"]}
GOOD_STATES = {"temperature": [], "power": ["ON", "OFF"], "fingerprint": []}


@pytest.mark.parametrize("name", list(BUILTIN_TYPES))
def test_a_cursor_of_ours_reads_back_as_it_was_made(name):
    device = BUILTIN_TYPES[name]
    cursor = forged(name, GOOD_KEYS[name], GOOD_STATES[name])
    ask = parse_request(raw({"device_id": "d", "date": "2026-01-22", "cursor": cursor}), device, 1000)
    assert list(ask.after) == GOOD_KEYS[name] and list(ask.state) == GOOD_STATES[name]


@pytest.mark.parametrize("name, cursor", [
    ("power", forged("temperature", GOOD_KEYS["temperature"], [])),  # another type's cursor
    ("fingerprint", forged("power", GOOD_KEYS["fingerprint"], [])),
    ("temperature", forged("temperature", ["2026-01-23T10:00:00", 21.5, 40.0, "LOW"], [])),  # another day
    ("temperature", forged("temperature", ["2026-01-22T10:00", 21.5, 40.0, "LOW"], [])),  # not canonical
    ("temperature", forged("temperature", ["2026-01-22Tnoon", 21.5, 40.0, "LOW"], [])),
    ("temperature", "x"),
    ("temperature", forged("temperature", ["2026-01-22T10:00:00", "21.5", 40.0, "LOW"], [])),
    ("temperature", forged("temperature", ["2026-01-22T10:00:00", 21.5, 140.0, "LOW"], [])),
    ("temperature", forged("temperature", ["2026-01-22T10:00:00", 21.5, 40.0, "WARM"], [])),
    ("temperature", forged("temperature", ["2026-01-22T10:00:00", True, 40.0, "LOW"], [])),
    ("temperature", forged("temperature", GOOD_KEYS["temperature"], ["ON"])),  # a state it never carries
    ("temperature", forged("temperature", GOOD_KEYS["temperature"])),
    ("temperature", forged("temperature", GOOD_KEYS["temperature"][:3], [])),
    ("power", forged("power", ["2026-01-22T10:00:00", 1, ""], ["ON", "OFF"])),
    ("power", forged("power", GOOD_KEYS["power"], ["ON"])),
    ("power", forged("power", GOOD_KEYS["power"], ["ON", 18446744073709551615])),
    ("fingerprint", forged("fingerprint", ["2026-01-22T10:00:00", 18446744073709551615, "PASS"], [])),
    ("fingerprint", forged("fingerprint", ["2026-01-22T10:00:00", "u" * 129, "PASS"], [])),
    ("fingerprint", forged("fingerprint", {"a": 1}, [])),
    ("fingerprint", "=" * 10),
    ("fingerprint", forged("fingerprint")),
])
def test_a_cursor_that_is_not_ours_for_that_type_and_day_is_an_invalid_field(name, cursor):
    with pytest.raises(RequestError) as failure:
        parse_request(raw({"device_id": "d", "date": "2026-01-22", "cursor": cursor}), BUILTIN_TYPES[name], 1000)
    assert failure.value.code == "invalid_field"


def test_integers_in_a_cursor_become_floats_and_those_beyond_a_readings_range_are_refused():
    """orjson reads 2**64 - 1 as an int; bound as a parameter it would overflow SQLite."""
    cursor = forged("temperature", ["2026-01-22T10:00:00", 25, 40, "LOW"], [])
    ask = parse_request(raw({"device_id": "d", "date": "2026-01-22", "cursor": cursor}), TEMP, 1000)
    assert ask.after == ("2026-01-22T10:00:00", 25.0, 40.0, "LOW")
    assert all(not isinstance(v, int) for v in ask.after[1:3])
    huge = forged("temperature", ["2026-01-22T10:00:00", 2**64 - 1, 40, "LOW"], [])
    with pytest.raises(RequestError) as failure:
        parse_request(raw({"device_id": "d", "date": "2026-01-22", "cursor": huge}), TEMP, 1000)
    assert failure.value.code == "invalid_field"
