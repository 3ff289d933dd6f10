"""The ingest actor, with a fake writer."""

import json

from conftest import FakePeer

from actors.devices import BUILTIN_TYPES
from actors.ingest import IngestActor
from actors.protocol.clock import ClockCheck
from actors.protocol.messages import ChildFailed, Inbound, ReadingBatch, WriteBatch
from actors.runtime.peers import Peers, ingest_name

RECEIVED = "2026-01-22 14:30:01"
CLOCK = ClockCheck("2001-01-01", 86400)


def start(device_name):
    peers, writer = Peers(), FakePeer()
    peers.register("writer", writer)
    return IngestActor.start(ingest_name(device_name), BUILTIN_TYPES[device_name], peers, 8192,
                             CLOCK), writer


def test_valid_and_invalid_readings_reach_the_writer_in_one_batch_with_every_ack():
    ingest, writer = start("temperature")
    good = json.dumps({"device_id": "t1", "temperature": 21.0, "humidity": 40.0, "status": "LOW",
                       "timestamp": "2026-01-22T14:30:00"}).encode()
    ingest.tell(ReadingBatch(RECEIVED, (Inbound(7, "home/temperature", good),
                                        Inbound(8, "home/temperature", b"{oops"))))
    batch = writer.next()
    assert isinstance(batch, WriteBatch) and batch.device == "temperature"
    assert batch.rows == (("t1", 21.0, 40.0, "LOW", "2026-01-22T14:30:00", "2026-01-22"),)
    [rejection] = batch.rejections
    assert (rejection.topic, rejection.payload, rejection.received_at) == ("home/temperature", b"{oops", RECEIVED)
    assert rejection.reason.startswith("not valid JSON")
    assert batch.ack_ids == (7, 8)


def test_each_device_type_has_its_own_ingest_actor():
    for name, payload in [
        ("power", {"device_id": "p1", "status": "DG_OFF", "timestamp": "2026-01-22T09:20:00"}),
        ("fingerprint", {"device_id": "f1", "user_id": "u", "authStatus": "FAIL", "timestamp": "2026-01-22T09:20:00"}),
    ]:
        ingest, writer = start(name)
        ingest.tell(ReadingBatch(RECEIVED, (Inbound(1, f"home/{name}", json.dumps(payload).encode()),)))
        batch = writer.next()
        assert batch.device == name and len(batch.rows) == 1 and not batch.rejections


def test_a_crash_is_reported_to_the_supervisor():
    peers, supervisor = Peers(), FakePeer()
    peers.register("writer", FakePeer())
    ingest = IngestActor.start(ingest_name("power"), BUILTIN_TYPES["power"], peers, 8192, CLOCK, supervisor=supervisor)
    ingest.tell(ReadingBatch(RECEIVED, None))  # a bug, not bad input: no items at all
    failed = supervisor.next()
    assert isinstance(failed, ChildFailed) and failed.name == "ingest/power"
    assert failed.urn == ingest.actor_urn and "TypeError" in failed.error


def test_an_oversized_reading_is_refused_before_parsing_and_kept_cut_to_the_limit():
    peers, writer = Peers(), FakePeer()
    peers.register("writer", writer)
    ingest = IngestActor.start(ingest_name("temperature"), BUILTIN_TYPES["temperature"], peers, 100, CLOCK)
    huge = b'{"device_id": "' + b"x" * 10_000 + b'"}'
    ingest.tell(ReadingBatch(RECEIVED, (Inbound(3, "home/temperature", huge),)))
    [rejection] = writer.next().rejections
    assert rejection.payload == huge[:100]
    assert rejection.reason == ("payload is 10017 bytes, over the 100-byte limit "
                                "(only its first 100 bytes are kept)")


def test_a_reading_whose_clock_cannot_be_right_is_rejected_and_counted_for_its_device():
    ingest, writer = start("temperature")

    def reading(device_id, timestamp):
        return json.dumps({"device_id": device_id, "temperature": 21.0, "humidity": 40.0, "status": "LOW",
                           "timestamp": timestamp}).encode()
    items = [("reset", "1970-01-01T00:00:07"), ("y2k", "2000-01-01T00:00:00+05:30"),
             ("ahead", "2027-01-22T14:30:00"), ("ahead_by_offset", "2026-01-23T20:01:00+05:30"),
             ("ok_tomorrow", "2026-01-23T14:00:00"), ("ok_far_east", "2026-01-23T04:00:00+14:00"),
             ("ok_first_day", "2001-01-01T00:00:00")]
    ingest.tell(ReadingBatch(RECEIVED, tuple(Inbound(i, "home/temperature", reading(*item))
                                             for i, item in enumerate(items, 1))))
    batch = writer.next()
    assert [row[0] for row in batch.rows] == ["ok_tomorrow", "ok_far_east", "ok_first_day"]
    assert batch.wrong_clocks == ("reset", "y2k", "ahead", "ahead_by_offset")
    reasons = [r.reason for r in batch.rejections]
    assert all(r.startswith("clock: ") for r in reasons)
    assert "before limits.earliest_date 2001-01-01" in reasons[0]
    assert "31535999 s ahead" in reasons[2] and "limits.max_clock_ahead (86400 s)" in reasons[2]
    assert "86459 s ahead" in reasons[3]  # 20:01 at +05:30 is 14:31 UTC the next day
    assert batch.ack_ids == tuple(range(1, 8))
