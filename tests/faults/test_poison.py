"""Fault 9: poison messages. A reading or a request that crashes what handles it, every time (the
test-only fault hook in poison_service.py), is set aside after 3 failures (limits.max_failures):
the reading into rejected_messages, the request answered internal_error. The service stays
connected meanwhile, nothing else is lost, and a message that kills the whole process stops
killing it after 3 starts."""

import json

import pytest
from builders import temperature
from conftest import Broker, Mqtt5App, Service, wait_until

DAY = "2026-09-01"


def reading(device, i, **extra):
    return temperature(device, i, DAY, value=20.0 + i, **extra)


@pytest.fixture
def poisoned(broker, tmp_path, database_env):
    """On SQLite and on PostgreSQL: the counts are kept in either."""
    service = Service(broker, tmp_path, **database_env)
    service.script = "tests/faults/poison_service.py"
    yield service
    service.stop_quietly()


def statuses(messages, client_id):
    return [json.loads(m.payload)["state"] for m in messages if m.topic == f"home/status/{client_id}" and m.payload]


def assert_stayed_connected(service, watched):
    log = service.log()
    assert "reconnected" not in log and "lost the MQTT broker connection" not in log
    assert statuses(watched, service.client_id) == ["online"], "the status flapped"
    assert service.proc.poll() is None


@pytest.mark.parametrize("where", ["INGEST", "WRITER"])
def test_a_reading_that_crashes_an_actor_every_time_is_set_aside_after_three_tries(poisoned, client, broker, where):
    poisoned.start().wait_ready()
    watch = Mqtt5App(broker.port, "watch")
    watch.subscribe(f"home/status/{poisoned.client_id}")
    poison = json.dumps(reading(f"POISON-{where}", 0)).encode()
    for i in range(40):  # good readings around it, published back to back
        client.publish("home/temperature", reading("good", i), wait=False)
        if i == 20:
            client.publish("home/temperature", poison, wait=False)
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM rejected_messages")[0][0] == 1, 60,
               what="the poison reading, set aside")
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 40, 30,
               what="every good reading")
    [(topic, payload, reason)] = poisoned.query("SELECT topic, payload, reason FROM rejected_messages")
    assert (topic, payload) in (("home/temperature", poison), (b"home/temperature", poison))  # PostgreSQL: bytes
    assert reason.startswith("set aside after 3 failed deliveries")
    log = poisoned.log()
    actor = "writer" if where == "WRITER" else "ingest/temperature"
    assert log.count(f"{actor} crashed") == 3
    assert log.count("set aside a reading on home/temperature after 3 failed deliveries") == 1
    assert poisoned.query("SELECT COUNT(*) FROM temperature_logs WHERE device_id <> 'good'") == [(0,)]
    assert poisoned.query("SELECT COUNT(DISTINCT timestamp) FROM temperature_logs") == [(40,)]
    assert_stayed_connected(poisoned, watch.drain())
    # Bystanders in a crashed transaction had a failure counted, then were stored on their own;
    # every count is forgotten once its message is handled (or set aside).
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM delivery_failures") == [(0,)], 10,
               what="the failure counts to be forgotten")
    # Started again, it is not tried again: it was acknowledged.
    assert poisoned.terminate() == 0
    poisoned.start().wait_ready()
    client.publish("home/temperature", reading("after", 0))
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 41)
    assert "crashed" not in poisoned.log()
    watch.close()


def test_a_request_that_crashes_its_query_actor_every_time_is_answered_internal_error(poisoned, client, broker):
    poisoned.start().wait_ready()
    client.publish("home/temperature", reading("good", 0))
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
    app = Mqtt5App(broker.port, "app5")
    app.subscribe(f"home/status/{poisoned.client_id}")
    app.subscribe("home/datatemp/app5/#")
    client.subscribe_replies("plain")
    good = {"device_id": "good", "date": DAY}
    client.publish("home/gettemp/plain", good, wait=False)
    app.ask("home/gettemp/app5", {"device_id": "POISON-QUERY", "date": DAY, "request_id": "p-1"},
            "home/datatemp/app5/screen", b"corr-\x00\x01")
    client.publish("home/gettemp/plain", good, wait=False)
    replies = [client.take(timeout=30), client.take(timeout=30)]
    assert [reply["count"] for _, reply in replies] == [1, 1]  # the others, answered meanwhile
    wait_until(lambda: any(m.topic == "home/datatemp/app5/screen" for m in list(app.messages.queue)), 60,
               what="the poison request's reply")
    watched = app.drain()
    [answer] = [m for m in watched if m.topic == "home/datatemp/app5/screen"]
    assert answer.properties.CorrelationData == b"corr-\x00\x01"
    body = json.loads(answer.payload)
    assert body["request_id"] == "p-1" and body["error"]["code"] == "internal_error"
    log = poisoned.log()
    assert log.count("query/0 crashed") + log.count("query/1 crashed") == 3
    assert "set aside a request on home/gettemp/app5 after 3 failed deliveries" in log
    assert "POISON-QUERY" in log.split("set aside a request", 1)[1].splitlines()[0]  # its payload, logged
    assert_stayed_connected(poisoned, watched)
    assert client.request("temp", "plain", good)["count"] == 1
    assert client.messages.empty() and app.messages.empty(), "nothing answered twice"
    app.close()


@pytest.mark.parametrize("kind", ["reading", "request"])
def test_a_message_that_kills_the_process_every_time_stops_killing_it_after_three_starts(poisoned, client, kind):
    """As under systemd (Restart=on-failure): the process is started again each time it dies."""
    poisoned.start().wait_ready()
    client.subscribe_replies("deadly")
    if kind == "reading":
        client.publish("home/temperature", reading("POISON-EXIT", 0))
    else:
        client.publish("home/gettemp/deadly", {"device_id": "POISON-EXIT", "date": DAY, "request_id": "x-1"})
    client.publish("home/temperature", reading("good", 1))
    deaths = 0
    for _ in range(6):
        # set aside: a reading kept in rejected_messages, a request answered with an error
        wait_until(lambda: poisoned.proc.poll() is not None or (
            poisoned.query("SELECT COUNT(*) FROM rejected_messages")[0][0] if kind == "reading"
            else not client.messages.empty()), 30, what="the process to die or the poison to be set aside")
        if poisoned.proc.poll() is None:
            break
        assert poisoned.proc.returncode == 70
        deaths += 1
        poisoned.start()
    assert deaths == 3
    poisoned.wait_ready()
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM temperature_logs WHERE device_id = 'good'")[0][0] == 1)
    if kind == "reading":
        [(reason,)] = wait_until(lambda: poisoned.query("SELECT reason FROM rejected_messages"))
        assert reason.startswith("set aside after 3 failed deliveries")
    else:
        topic, reply = client.take(timeout=30)
        assert reply["request_id"] == "x-1" and reply["error"]["code"] == "internal_error"
    # Forgotten once handled (a request, once the connection has outlived its answer by 5 s).
    wait_until(lambda: poisoned.query("SELECT COUNT(*) FROM delivery_failures") == [(0,)], 20)
    assert poisoned.proc.poll() is None


def test_a_request_whose_reply_gets_the_service_disconnected_is_answered_internal_error_after_three(tmp_path):
    """The broker drops a client that publishes past its max_packet_size. With the size check
    bypassed for one request (the fault hook), its reply does that: the request comes back after
    each reconnect, answered before; after 3 such failures it is set aside, and the link stays up."""
    broker = Broker(tmp_path, extra=("max_packet_size 4096",))
    broker.start()
    service = Service(broker, tmp_path)
    service.script = "tests/faults/poison_service.py"
    app = None
    try:
        service.start().wait_ready()
        app = Mqtt5App(broker.port, "big")
        app.subscribe("home/datatemp/big")
        app.ask("home/gettemp/big", {"device_id": "POISON-OVERSIZE", "date": DAY, "request_id": "o-1"})
        reply = json.loads(app.take(timeout=60).payload)
        assert reply["request_id"] == "o-1" and reply["error"]["code"] == "internal_error"
        log = service.log()
        assert log.count("reconnected to the MQTT broker") == 3  # bounded: not once a second for ever
        assert "set aside a request on home/gettemp/big after 3 failed deliveries" in log
        app.ask("home/gettemp/big", {"device_id": "t1", "date": DAY})
        assert json.loads(app.take().payload)["count"] == 0
        assert service.log().count("reconnected to the MQTT broker") == 3 and service.proc.poll() is None
    finally:
        if app is not None:
            app.close()
        service.stop_quietly()
        broker.stop()
