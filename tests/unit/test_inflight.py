"""The MQTT link's pure ledgers, without a broker: what is in hand (InFlight), the delivery limit's
memory (Deliveries) and the broker limits (packets.py)."""

import pytest

from actors.devices import BUILTIN_TYPES
from actors.mqtt.inflight import Held, InFlight
from actors.mqtt.limit import ANSWERED_MEMORY, Deliveries, Verdict
from actors.mqtt.packets import MAX_TOPIC_BYTES, MAX_TOPIC_LEVELS, publish_size, topic_problem
from actors.protocol.messages import Inbound, Request, fingerprint


def reading(ack_id, payload=b"{}"):
    return Held(ack_id, Inbound(ack_id, "home/temperature", payload), "ingest/temperature")


def request(ack_id, payload=b"{}", reply_topic="home/datatemp/app", correlation=None):
    return Held(ack_id, Request(ack_id, "home/gettemp/app", "temperature", "app", payload, reply_topic, correlation), "query/0")


def test_in_flight_releases_each_message_once_and_knows_when_to_hold_back():
    inflight = InFlight(limit=4)
    for i in range(1, 5):
        inflight.add(i, reading(i))
    assert inflight.full and not inflight.roomy and inflight.peak == 4
    assert [h.packet_id for h in inflight.release((1, 2, 2, 99))] == [1, 2]  # twice, or unknown: once
    assert inflight.roomy and len(inflight) == 2
    assert [h.packet_id for h in inflight.abandon()] == [3, 4]
    assert len(inflight) == 0 and inflight.release((3,)) == []


def test_a_fingerprint_names_the_content_and_where_the_reply_goes_not_the_delivery():
    assert fingerprint(reading(1).message) == fingerprint(reading(2).message)  # another packet id
    assert fingerprint(reading(1).message) != fingerprint(reading(1, b'{"a": 1}').message)
    assert fingerprint(request(1).message) != fingerprint(request(1, reply_topic="home/datatemp/app/x").message)
    assert fingerprint(request(1).message) != fingerprint(request(1, correlation=b"c").message)
    # Lengths are part of it: moving bytes between the parts makes another fingerprint.
    a = Request(1, "home/gettemp/app", "temperature", "app", b"ab", "home/datatemp/app", b"c")
    b = Request(1, "home/gettemp/app", "temperature", "app", b"a", "home/datatemp/app", b"bc")
    assert fingerprint(a) != fingerprint(b)


def test_on_the_first_connection_a_redelivery_is_struck_only_if_the_dead_process_was_handling_it():
    deliveries = Deliveries(3, died_with=frozenset({5}))
    assert deliveries.redelivered(b"m", 5) is Verdict.STRIKE  # marked: the process may have died of it
    assert deliveries.redelivered(b"n", 6) is Verdict.LOOK_UP  # in hand, not handled: it may have failed before
    deliveries.lost([])
    assert deliveries.redelivered(b"m", 5) is Verdict.FRESH  # sent on a lost connection, never read


def test_without_handling_marks_every_redelivery_after_a_death_is_a_suspect():
    deliveries = Deliveries(3, died_with=None)
    assert deliveries.redelivered(b"m", 5) is deliveries.redelivered(b"n", 6) is Verdict.STRIKE


def test_a_message_in_hand_at_a_lost_connection_comes_back_blameless():
    deliveries = Deliveries(3)
    held = reading(7)
    deliveries.lost([held])
    assert deliveries.redelivered(held.fingerprint, 7) is Verdict.FRESH
    held_before = reading(8, b"failed before")
    deliveries.counted(fingerprint(held_before.message), 1)
    deliveries.lost([held_before])
    assert deliveries.redelivered(held_before.fingerprint, 8) is Verdict.FAILED_BEFORE  # still tried alone


def test_a_qos_0_message_is_not_remembered_at_a_loss_it_never_comes_back():
    deliveries = Deliveries(3)
    held = Held(None, Inbound(1, "home/temperature", b"{}"), "ingest/temperature")
    deliveries.lost([held])
    assert deliveries._abandoned == {}


def test_a_request_we_answered_that_comes_back_is_struck_our_reply_may_have_broken_the_connection():
    deliveries = Deliveries(3)
    deliveries.lost([])
    fp = fingerprint(request(1).message)
    deliveries.answered(fp)
    assert deliveries.redelivered(fp, 1) is Verdict.STRIKE
    assert deliveries.redelivered(fp, 1) is Verdict.FRESH  # once


def test_answers_are_remembered_for_a_while_only():
    now = [0.0]
    deliveries = Deliveries(3, clock=lambda: now[0])
    deliveries.lost([])
    deliveries.answered(b"old")
    now[0] = ANSWERED_MEMORY + 1
    deliveries.answered(b"new")
    assert deliveries.redelivered(b"old", 1) is Verdict.FRESH
    assert deliveries.redelivered(b"new", 2) is Verdict.STRIKE


def test_counts_reach_the_limit_and_handled_messages_are_forgiven():
    deliveries = Deliveries(3)
    assert not deliveries.counted(b"m", 2) and not deliveries.exhausted(b"m")
    assert deliveries.counted(b"m", 3) and deliveries.exhausted(b"m")
    assert deliveries.forgive(b"m") and not deliveries.forgive(b"m")


@pytest.mark.parametrize("topic, problem", [
    ("home/datatemp/app", None),
    ("home/datatemp/app/" + "/".join("x" * (MAX_TOPIC_LEVELS - 3)), None),
    ("home/datatemp/app/" + "/".join("x" * (MAX_TOPIC_LEVELS - 2)), "levels"),
    ("x" * MAX_TOPIC_BYTES, None),
    ("x" * (MAX_TOPIC_BYTES + 1), "bytes"),
    ("é" * (MAX_TOPIC_BYTES // 2 + 1), "bytes"),  # counted in UTF-8 bytes, not characters
    ("home/+/app", "wildcard"), ("home/#", "wildcard"),
    ("home/a\x00b", "control"), ("home/a\x85b", "control"), ("home/\ud800", "control"),
    (b"home/bytes", "UTF-8"),
])
def test_topic_limits(topic, problem):
    found = topic_problem(topic)
    assert (found is None) if problem is None else (problem in found)


def test_publish_size_counts_the_whole_packet():
    # fixed header 1 + remaining length 1 + topic (2 + 1) + properties length 1 + payload 2
    assert publish_size("t", b"ab") == 8
    assert publish_size("t", b"ab", qos=1) == 10  # + packet id
    assert publish_size("t", b"ab", correlation=b"xyz") == 8 + 1 + 2 + 3  # id, length, data
    big = publish_size("t", b"x" * 200)  # the remaining length takes two bytes past 127
    assert big == 1 + 2 + 3 + 1 + 200


def test_forgetting_old_answers_costs_little_however_many_there_are():
    now = [0.0]
    deliveries = Deliveries(3, clock=lambda: now[0])
    for i in range(10_000):
        now[0] = i * 0.1  # 10 answers a second for 1,000 s
        deliveries.answered(i.to_bytes(4, "big"))
    assert len(deliveries._answered) == ANSWERED_MEMORY * 10 + 1


def test_a_request_waits_only_for_readings_it_may_see():
    """Read after arrival, narrowed: readings of its device type that name its device (or might:
    a payload with an escape may spell the id otherwise)."""
    from actors.mqtt.arrival import sees
    inflight = InFlight(limit=10)
    inflight.add(1, Held(1, Inbound(1, "home/temperature", b'{"device_id": "other", "temperature": 1}'),
                         "ingest/temperature"))
    inflight.add(2, Held(2, Inbound(2, "home/power", b'{"device_id": "t1", "status": "EB_ON"}'), "ingest/power"))
    asks = {name: Request(9, "home/gettemp/app", "temperature", "app", body, "home/datatemp/app", None)
            for name, body in (("t1", b'{"device_id": "t1", "date": "2026-01-22"}'), ("bad", b"[1]"),
                               ("other", b'{"device_id":"other"}'))}
    assert sees(asks["t1"], BUILTIN_TYPES) == ("ingest/temperature", b'"t1"')
    assert not inflight.reading_before(9, *sees(asks["t1"], BUILTIN_TYPES))  # another device, another type
    assert inflight.reading_before(9, *sees(asks["other"], BUILTIN_TYPES))
    assert inflight.reading_before(9, *sees(asks["bad"], BUILTIN_TYPES))  # unreadable here: any reading of the type
    inflight.add(3, Held(3, Inbound(3, "home/temperature", b'{"device_id": "\\u0074\\u0031"}'), "ingest/temperature"))
    assert inflight.reading_before(9, *sees(asks["t1"], BUILTIN_TYPES))  # "\u0074\u0031" is t1
    assert not inflight.reading_before(2, *sees(asks["t1"], BUILTIN_TYPES))  # only what came before the request
