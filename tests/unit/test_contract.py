"""docs/asyncapi.yaml: valid AsyncAPI 3.0, in agreement with the code, and a check that can fail.

The official schema is @asyncapi/specs 6.11.1's schemas/3.0.0-without-$id.json, kept as it is in
tests/unit/data/asyncapi-3.0.0.schema.json (sha256 abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f).
Every message the service sends in the suite is checked against the document by tests/conftest.py."""

import copy
import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, contract
from jsonschema import Draft7Validator

from actors import __version__
from actors.devices import BUILTIN_TYPES
from actors.devices.kinds import OnTime
from actors.protocol.requests import CATALOGUE_FIELDS, DAY_FIELDS, LATEST_FIELDS, SUMMARY_FIELDS, stems

OFFICIAL = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"


def official_problems(document: dict) -> list[str]:
    return [e.message[:200] for e in Draft7Validator(json.loads(OFFICIAL.read_text())).iter_errors(document)]


def test_the_document_is_valid_asyncapi_3_and_that_check_can_fail():
    document = contract().document
    assert document["asyncapi"] == "3.0.0"
    assert official_problems(document) == []
    broken = copy.deepcopy(document)
    broken["operations"]["sendStats"]["action"] = "publish"  # AsyncAPI 2's word
    broken["components"]["messages"]["stats"]["bindings"] = {"mqtt": {"retain": True}}  # not a message binding
    assert len(official_problems(broken)) == 2


def test_every_example_in_the_document_is_a_valid_message():
    examples = list(contract().examples())
    assert len(examples) >= 20
    for name, payload in examples:
        assert list(contract().validator(name).iter_errors(payload)) == [], name


REPLY = {"device_id": "t1", "date": "2026-01-22", "count": 1,
         "records": [{"temperature": 22.5, "humidity": 45.3, "status": "HIGH", "timestamp": "2026-01-22T14:30:00"}]}


@pytest.mark.parametrize("topic, payload, objection", [
    ("home/datatemp/app", {**REPLY, "records": [{**REPLY["records"][0], "humidty": 45.3}]}, "'humidty' was unexpected"),
    ("home/datatemp/app", {**REPLY, "count": "1"}, "'1' is not of type 'integer'"),
    ("home/datatemp/app", {**REPLY, "date": "22/01/2026"}, "at date: '22/01/2026' is not valid"),
    ("home/datapower/app", REPLY, "as powerDay: at records/0:"),  # a temperature record on the power topic
    ("home/datatemp/app", {"error": {"code": "nope", "message": "x"}}, "'nope' is not one of"),
    ("home/datatemp/app", {"request_id": "r", "error": {"code": "invalid_json", "message": "x"}}, "deviceError"),
    ("home/availability/temperature/t1", {"state": "gone", "last_seen": "2026-01-22T14:30:00",
                                          "received_at": "2026-01-22 14:30:01"}, "'gone' is not one of"),
    ("home/status/svc", {"state": "online"}, "'client_id' is a required property"),
    ("home/elsewhere/app", REPLY, "not a channel the service sends on"),
])
def test_the_check_catches_a_reply_that_is_not_as_documented(topic, payload, objection):
    [problem] = contract().problems(topic, json.dumps(payload).encode())
    assert objection in problem


def test_the_check_passes_what_the_service_sends():
    assert contract().problems("home/datatemp/app", json.dumps(REPLY).encode()) == []
    assert contract().problems("home/datatemp/app/replies/1", json.dumps(REPLY).encode()) == []  # a Response Topic
    assert contract().problems("home/status/svc", b"") == []  # an empty retained message clears the topic


def test_the_document_agrees_with_the_code():
    document = contract().document
    assert document["info"]["version"] == __version__
    channels = {c["address"] for c in document["channels"].values()}
    assert {d.reading_topic for d in BUILTIN_TYPES.values()} <= channels
    assert {f"{stem}/{{app_id}}" for pair in stems(BUILTIN_TYPES).values() for stem in pair} <= channels
    schemas = document["components"]["schemas"]
    for name, fields in (("DayRequest", DAY_FIELDS), ("LatestRequest", LATEST_FIELDS),
                         ("SummaryRequest", SUMMARY_FIELDS), ("CatalogueRequest", CATALOGUE_FIELDS)):
        assert set(schemas[name]["properties"]) == set(fields), name
    assert schemas["CatalogueRequest"]["properties"]["type"]["enum"] == list(BUILTIN_TYPES)
    for d in BUILTIN_TYPES.values():
        record = schemas[f"{d.name.capitalize()}Record"]["properties"]
        assert set(record) == set(d.record((*("ON",) * len(d.value_columns), "t")))
        # the per-type parts, as the definitions (actors/devices/) say: a reading's fields and their rules ...
        reading = schemas[f"{d.name.capitalize()}Reading"]
        assert reading["required"] == ["device_id", *d.reading_fields, "timestamp"], d
        for f in d.fields:
            stated = reading["properties"][f.name]
            stated = schemas[stated["$ref"].rsplit("/", 1)[1]] if "$ref" in stated else stated
            assert {k: v for k, v in stated.items() if k != "description"} == f.schema(), (d, f.name)
        # ... and a summary bucket's keys, as its summary kinds make them
        bucket = schemas[f"{d.name.capitalize()}Summary"]["properties"]["buckets"]["items"]
        keys = [k for kind in d.summary for k in (kind.bucket(None, 0) if not isinstance(kind, OnTime)
                                                  else (f"{p}_on_s" for p in kind.sources.values()))]
        assert bucket["required"] == ["start", "readings", *keys], d
    source = "".join(p.read_text() for p in (ROOT / "actors").rglob("*.py"))
    used = set(re.findall(r'(?:error_reply\(|fail\(|RequestError\(|Refusal\(reply_topic, correlation, |code = )"([a-z_]+)"',
                          source))
    assert used == set(schemas["Error"]["properties"]["code"]["enum"])
