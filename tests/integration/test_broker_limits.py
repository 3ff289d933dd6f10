"""Within the broker's limits, always: against a Mosquitto with `max_packet_size 2048` (which it
announces in CONNACK and enforces by dropping the client), a busy day comes in pages that fit,
a reply that cannot fit becomes a too_large error, and the service never publishes anything that
gets it disconnected. Reconnects and status flaps are counted, not just crashes."""

import json

import pytest
from builders import temperature
from conftest import Broker, Mqtt5App, MqttClient, Service, wait_until

from actors.mqtt.packets import publish_size

DAY = "2026-03-03"
MAX_PACKET = 2048


@pytest.fixture
def small_broker(tmp_path):
    b = Broker(tmp_path, extra=(f"max_packet_size {MAX_PACKET}",))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def limited_service(small_broker, tmp_path):
    s = Service(small_broker, tmp_path)
    yield s
    s.stop_quietly()


def reading(n):
    return temperature("busy", n, DAY, value=20.0 + n / 100)


def test_replies_fit_the_brokers_maximum_packet_size_and_the_service_stays_connected(limited_service, small_broker):
    limited_service.start().wait_ready()
    devices, app = MqttClient(small_broker.port), Mqtt5App(small_broker.port, "small")
    try:
        app.subscribe(f"home/status/{limited_service.client_id}")
        app.subscribe("home/datatemp/small/#")
        for n in range(300):
            devices.publish("home/temperature", reading(n), wait=(n % 100 == 99))
        wait_until(lambda: limited_service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 300)

        # The seed's request for a day of 300 readings (~25 KB): pages that each fit.
        records, body, pages = [], {"device_id": "busy", "date": DAY}, 0
        while True:
            app.ask("home/gettemp/small", body, "home/datatemp/small/pages", b"p")
            message = app.take()
            reply = json.loads(message.payload)
            assert publish_size(message.topic, message.payload, 0, b"p") <= MAX_PACKET
            records += reply["records"]
            pages += 1
            if "next" not in reply:
                break
            body = {**body, "cursor": reply["next"]}
        assert len(records) == 300 and pages > 10
        assert [r["timestamp"] for r in records] == sorted(r["timestamp"] for r in records)

        # Correlation data so large that not one record fits beside it: too_large, and then without
        # the correlation data, since even the error would not fit with it.
        app.ask("home/gettemp/small", {"device_id": "busy", "date": DAY, "request_id": "big-corr"},
                "home/datatemp/small/x", b"c" * 1900)
        refused = app.take()
        assert json.loads(refused.payload) == {"device_id": "busy", "date": DAY, "request_id": "big-corr",
                                               "error": {"code": "too_large", "message": json.loads(
                                                   refused.payload)["error"]["message"]}}
        # Room for a small error but not for the latest record: too_large, correlation kept.
        app.ask("home/gettemp/small", {"device_id": "busy", "latest": True, "request_id": "l"},
                "home/datatemp/small/y", b"k" * 1850)
        latest = app.take()
        assert json.loads(latest.payload)["error"]["code"] == "too_large"
        assert latest.properties.CorrelationData == b"k" * 1850

        log = limited_service.log()
        assert "reconnected" not in log and "lost the MQTT broker connection" not in log
        states = [json.loads(m.payload)["state"] for m in app.drain() if m.topic.startswith("home/status/")]
        assert "offline" not in states
        assert limited_service.proc.poll() is None
    finally:
        devices.close()
        app.close()
