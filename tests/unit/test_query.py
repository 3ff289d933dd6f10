"""A query actor over a real SQLite file, with a fake MQTT link."""

import json
import random
from datetime import datetime, timezone
from itertools import accumulate

import orjson
import pytest

from actors.devices import BUILTIN_TYPES
from actors.protocol.messages import Reply, Request
from actors.protocol.replies import cut
from actors.protocol.requests import Ask, stems
from actors.query import QueryActor, QueryRules
from actors.runtime.peers import Peers
from actors.storage.days import day_reply
from actors.storage.models import all_models, open_database
from actors.storage.rollups import Upkeep
from actors.storage.summaries import Summaries, bucket_starts

STEMS = stems(BUILTIN_TYPES)
TEMPERATURE_LOG, POWER_LOG, FINGERPRINT_LOG = (BUILTIN_TYPES[n].model for n in ("temperature", "power", "fingerprint"))
from conftest import FakePeer

CREATED = "2026-01-22 15:00:00"


@pytest.fixture
def db(tmp_path):
    database = open_database(str(tmp_path / "mqtt_data.db"), 5)
    database.connect()
    database.create_tables(all_models(BUILTIN_TYPES))
    yield database
    database.close()


@pytest.fixture
def ask(db):
    peers, link = Peers(), FakePeer()
    peers.register("link", link)
    query = QueryActor.start("query/0", db, peers, QueryRules(max_request_bytes=200))

    def ask(device, body, app_id="app1", max_bytes=None):
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        query.tell(Request(42, f"{STEMS[device][0]}/{app_id}", device, app_id, payload, f"{STEMS[device][1]}/{app_id}", max_bytes=max_bytes))
        reply = link.next()
        assert isinstance(reply, Reply) and reply.ack_id == 42
        return json.loads(reply.payload)
    return ask


def test_a_temperature_day_in_time_order_for_one_device(db, ask):
    stamps = [f"2026-01-22T{h:02d}:00:00" for h in range(0, 24, 3)]
    shuffled = random.Random(3).sample(stamps, len(stamps))
    TEMPERATURE_LOG.insert_many(
        [("t1", 20.0 + i, 50.0, "LOW", ts, "2026-01-22", CREATED) for i, ts in enumerate(shuffled)]
        + [("t1", 1.0, 1.0, "HIGH", "2026-01-23T00:00:00", "2026-01-23", CREATED),
           ("t2", 2.0, 2.0, "HIGH", "2026-01-22T12:00:00", "2026-01-22", CREATED)],
        fields=[TEMPERATURE_LOG.device_id, TEMPERATURE_LOG.temperature, TEMPERATURE_LOG.humidity,
                TEMPERATURE_LOG.status, TEMPERATURE_LOG.timestamp, TEMPERATURE_LOG.date,
                TEMPERATURE_LOG.created_at]).execute()
    reply = ask("temperature", {"device_id": "t1", "date": "2026-01-22"})
    assert (reply["device_id"], reply["date"], reply["count"]) == ("t1", "2026-01-22", len(stamps))
    assert [r["timestamp"] for r in reply["records"]] == stamps
    assert reply["records"][0] == {"temperature": 20.0 + shuffled.index(stamps[0]), "humidity": 50.0,
                                   "status": "LOW", "timestamp": stamps[0]}


def power(device, eb, dg, ts):
    POWER_LOG.create(device_id=device, ebstatus=eb, dgstatus=dg, timestamp=ts, date=ts[:10],
                          created_at=CREATED)


def test_power_records_show_both_sources_carrying_state_from_earlier_days(db, ask):
    # stored in an order unlike the timestamps: the reply must follow the timestamps
    power("p1", "", "ON", "2026-01-23T08:00:00")
    power("p1", "OFF", "", "2026-01-23T07:00:00")
    power("p1", "ON", "", "2026-01-21T23:00:00")
    power("p1", "", "OFF", "2026-01-22T23:30:00")
    power("p2", "", "ON", "2026-01-22T01:00:00")  # another device's state never leaks in
    reply = ask("power", {"device_id": "p1", "date": "2026-01-23"})
    assert reply["records"] == [
        {"ebstatus": "OFF", "dgstatus": "OFF", "timestamp": "2026-01-23T07:00:00"},
        {"ebstatus": "OFF", "dgstatus": "ON", "timestamp": "2026-01-23T08:00:00"},
    ]
    reply = ask("power", {"device_id": "p1", "date": "2026-01-21"})
    assert reply["records"] == [{"ebstatus": "ON", "dgstatus": "", "timestamp": "2026-01-21T23:00:00"}]


def test_fingerprint_replies_say_authStatus(db, ask):
    FINGERPRINT_LOG.create(device_id="f1", user_id="user_123", auth_status="PASS",
                          timestamp="2026-01-22T14:40:22", date="2026-01-22", created_at=CREATED)
    reply = ask("fingerprint", {"device_id": "f1", "date": "2026-01-22"}, app_id="phone-9")
    assert reply == {"device_id": "f1", "date": "2026-01-22", "count": 1,
                     "records": [{"user_id": "user_123", "authStatus": "PASS", "timestamp": "2026-01-22T14:40:22"}]}


def test_no_data_is_an_empty_reply(ask):
    reply = ask("power", {"device_id": "nobody", "date": "2026-01-22"})
    assert reply == {"device_id": "nobody", "date": "2026-01-22", "count": 0, "records": []}


def test_a_bad_request_gets_an_error_reply(ask):
    reply = ask("temperature", {"device_id": "t1", "date": "2026-02-30"})
    assert reply["error"]["code"] == "invalid_field" and "YYYY-MM-DD" in reply["error"]["message"]
    assert reply["device_id"] == "t1" and "records" not in reply
    reply = ask("temperature", b"{nope")
    assert reply["error"]["code"] == "invalid_json" and "device_id" not in reply


def test_hostile_device_ids_are_matched_literally(db, ask):
    for device in ("t'1", "t%", "t_", "t;DROP TABLE temperature_logs;--"):
        TEMPERATURE_LOG.create(device_id=device, temperature=1.0, humidity=1.0, status="LOW",
                              timestamp="2026-01-22T00:00:00", date="2026-01-22", created_at=CREATED)
    for device in ("t'1", "t%", "t_", "t;DROP TABLE temperature_logs;--"):
        reply = ask("temperature", {"device_id": device, "date": "2026-01-22"})
        assert reply["count"] == 1 and reply["device_id"] == device
    reply = ask("temperature", {"device_id": "t", "date": "2026-01-22"})
    assert reply["count"] == 0


def test_an_oversized_request_is_refused_before_parsing(ask):
    payload = b'{"device_id": "' + b"p" * 300 + b'", "date": "2026-01-22"}'
    reply = ask("power", payload)
    assert reply == {"error": {"code": "too_large",
                               "message": f"the request is {len(payload)} bytes, over the 200-byte limit"}}


def test_a_reply_fits_the_room_the_broker_leaves_or_is_too_large(db, ask):
    TEMPERATURE_LOG.insert_many([
        {"device_id": "t1", "temperature": 20.0 + i, "humidity": 50.0, "status": "LOW",
         "timestamp": f"2026-01-22T10:{i:02d}:00", "date": "2026-01-22", "created_at": ""} for i in range(40)]).execute()
    whole = ask("temperature", {"device_id": "t1", "date": "2026-01-22"})
    assert whole["count"] == 40 and "next" not in whole
    page = ask("temperature", {"device_id": "t1", "date": "2026-01-22"}, max_bytes=1000)
    assert 0 < page["count"] < 40 and "next" in page and len(json.dumps(page, separators=(",", ":"))) <= 1000
    tiny = ask("temperature", {"device_id": "t1", "date": "2026-01-22", "request_id": "r"}, max_bytes=100)
    assert tiny["error"]["code"] == "too_large" and tiny["request_id"] == "r"


def test_a_bug_while_answering_is_an_internal_error_reply_and_the_actor_lives_on(db, ask, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("injected")
    monkeypatch.setattr(BUILTIN_TYPES["power"], "rows", broken)
    reply = ask("power", {"device_id": "p1", "date": "2026-01-22", "request_id": "q"})
    assert reply == {"request_id": "q", "device_id": "p1", "date": "2026-01-22",
                     "error": {"code": "internal_error", "message": reply["error"]["message"]}}
    assert "ZeroDivisionError: injected" in caplog.text  # the traceback, logged
    monkeypatch.undo()
    assert ask("power", {"device_id": "p1", "date": "2026-01-22"})["count"] == 0


@pytest.mark.parametrize("next_", [None, "c2FtcGxl"])
@pytest.mark.parametrize("request_id", [None, "r-1", 7])
@pytest.mark.parametrize("records", [[], [{"temperature": 1.5, "status": "LOW", "timestamp": "2026-01-22T10:00:00"}] * 3])
def test_a_reply_put_together_from_encoded_records_is_the_json_of_the_whole(next_, request_id, records):
    ask = Ask("t\"1\u00e9", "2026-01-22", request_id=request_id)
    whole = {"device_id": ask.device_id, "date": ask.date, "count": len(records), "records": records,
             **({"next": next_} if next_ else {}), **({"request_id": request_id} if request_id is not None else {})}
    encoded = orjson.dumps(records)[1:-1]
    assert day_reply(ask, ask.date, len(records), encoded, next_) == orjson.dumps(whole)


def test_cutting_one_encoding_of_all_records_takes_as_many_as_encoding_each_would():
    rng = random.Random(7)
    for _ in range(300):
        records = [{"user_id": rng.choice(['a', '},{"x":1', '\\"},{"', 'é' * rng.randrange(20)]),
                    "temperature": rng.uniform(-50, 50), "timestamp": "2026-01-22T10:00:00"}
                   for _ in range(rng.randrange(0, 30))]
        room = rng.randrange(0, 3000)
        sizes = list(accumulate(len(orjson.dumps(r)) + 1 for r in records))
        n = sum(1 for total in sizes if total <= room)
        assert cut(orjson.dumps(records), len(records), room) == (orjson.dumps(records[:n])[1:-1], n)


def stored(db, kind, rows):
    """Rows stored as the writer stores them: with the catalogue and the rollups kept up to date."""
    rows = [(*row, CREATED) for row in rows]
    BUILTIN_TYPES[kind].model.insert_many(rows, fields=[f for f in BUILTIN_TYPES[kind].model._meta.sorted_fields
                                                      if f.name != "id"]).execute()
    Upkeep(db).stored(db.connection(), {kind: rows}, {}, CREATED)


def test_a_summary_that_does_not_fit_one_reply_comes_in_pages_that_join_up(db, ask):
    stored(db, "temperature", [("t1", 20.0 + h % 5, 50.0, "HIGH", f"2026-01-{d:02d}T{h:02d}:30:00",
                                f"2026-01-{d:02d}") for d in (1, 2, 3) for h in range(24)])
    body = {"device_id": "t1", "summary": "hour", "from_date": "2026-01-01", "to_date": "2026-01-03", "request_id": "x"}
    whole = ask("temperature", body)
    assert whole["count"] == 72 and "next" not in whole and whole["request_id"] == "x"
    pages, next_ = [], None
    while True:
        reply = ask("temperature", {**body, **({"cursor": next_} if next_ else {})}, max_bytes=2000)
        assert len(orjson.dumps(reply)) <= 2000
        pages.append(reply)
        if (next_ := reply.get("next")) is None:
            break
    assert len(pages) > 3 and [b for p in pages for b in p["buckets"]] == whole["buckets"]
    assert whole["buckets"][13] == {"start": "2026-01-01T13:00:00", "readings": 1,
                                    "temperature": {"min": 23.0, "max": 23.0, "avg": 23.0},
                                    "humidity": {"min": 50.0, "max": 50.0, "avg": 50.0}, "high": 1, "low": 0}


def test_the_catalogue_lists_only_the_devices_an_app_may_read_in_pages(db):
    stored(db, "temperature", [(f"temp_{i:02d}", 21.0, 40.0, "LOW", "2026-01-22T10:00:00", "2026-01-22")
                               for i in range(30)])
    stored(db, "fingerprint", [("door", "u1", "PASS", "2026-01-22T10:00:00", "2026-01-22")])
    peers, link = Peers(), FakePeer()
    peers.register("link", link)
    rules = QueryRules(readable={"phone-*": ("temp_1*", "door")})
    query = QueryActor("query/0", db, peers, rules)
    reply = orjson.loads(query.answer("devices", b"{}", "phone-1"))
    assert [(e["type"], e["device_id"]) for e in reply["devices"]] == \
        [("fingerprint", "door")] + [("temperature", f"temp_{i}") for i in range(10, 20)]
    assert reply["devices"][0]["state"] is None and reply["devices"][1]["state"] == "live"
    pages, body = [], {"limit": 4}
    while True:
        page = orjson.loads(query.answer("devices", orjson.dumps(body), "phone-1"))
        pages += page["devices"]
        if "next" not in page:
            break
        body = {"limit": 4, "cursor": page["next"]}
    assert pages == reply["devices"]
    assert orjson.loads(query.answer("devices", b"{}", "other"))["devices"] == []


def test_power_on_time_is_cut_at_the_devices_now(db):
    # The device stamps local time (UTC+5:30, no offset sent); its event was stored at 04:45 UTC.
    BUILTIN_TYPES["power"].model.insert_many([("p1", "ON", "", "2026-01-22T10:15:00", "2026-01-22", "x")]).execute()
    Upkeep(db).stored(db.connection(), {"power": [("p1", "ON", "", "2026-01-22T10:15:00", "2026-01-22", "x")]},
                      {}, "2026-01-22 04:45:00")
    half_an_hour_later = datetime(2026, 1, 22, 5, 15, tzinfo=timezone.utc)
    summaries = Summaries(db, clock=lambda: half_an_hour_later)
    hours = summaries.buckets(BUILTIN_TYPES["power"], "p1", "hour", bucket_starts("hour", "2026-01-22", "2026-01-22"))
    assert [h["eb_on_s"] for h in hours[9:13]] == [0, 1800, 0, 0]  # 10:15 to the device's 10:45
    [day] = summaries.buckets(BUILTIN_TYPES["power"], "p1", "day", ["2026-01-22"])
    assert (day["eb_on_s"], day["dg_on_s"], day["readings"]) == (1800, 0, 1)
    later = Summaries(db, clock=lambda: datetime(2026, 1, 25, tzinfo=timezone.utc))
    assert later.buckets(BUILTIN_TYPES["power"], "p1", "day", ["2026-01-23"])[0]["eb_on_s"] == 86400


def test_a_page_reads_on_when_earlier_replies_made_its_guess_too_small(db, ask):
    """A page reads about as many rows as fit by the size of earlier records: shorter ones now
    must not shorten the page, nor lose or repeat a record across pages."""
    stamps = [f"{h:02d}:{m:02d}:00" for h in range(24) for m in range(0, 60, 1)][:1500]
    stored(db, "fingerprint", [("f1", "u" * 100, "PASS", f"2026-01-21T{t}", "2026-01-21") for t in stamps]
           + [("f1", "u", "FAIL", f"2026-01-22T{t}", "2026-01-22") for t in stamps])
    long = ask("fingerprint", {"device_id": "f1", "date": "2026-01-21"})
    assert 0 < long["count"] < 800  # records of ~150 bytes: the guess for the next page
    pages = [ask("fingerprint", {"device_id": "f1", "date": "2026-01-22"})]
    assert pages[0]["count"] > 1000 and len(orjson.dumps(pages[0])) <= 100_000  # as many as fit
    while "next" in pages[-1]:
        pages.append(ask("fingerprint", {"device_id": "f1", "date": "2026-01-22", "cursor": pages[-1]["next"]}))
    assert [r["timestamp"][11:] for p in pages for r in p["records"]] == stamps
    again = ask("fingerprint", {"device_id": "f1", "date": "2026-01-22"})  # the guess fits this day now
    assert again == pages[0]
