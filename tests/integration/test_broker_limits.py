"""Within the broker's limits, always: against a Mosquitto with `max_packet_size 2048` (which it
announces in CONNACK and enforces by dropping the client), a busy day comes in pages that fit,
a reply that cannot fit becomes a too_large error, and the service never publishes anything that
gets it disconnected. Reconnects and status flaps are counted, not just crashes."""

import json
import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from actors.packets import publish_size
from conftest import Broker, MqttClient, Service, wait_until

DAY = "2026-03-03"
MAX_PACKET = 2048


@pytest.fixture
def small_broker(tmp_path):
    b = Broker(tmp_path, extra=(f"max_packet_size {MAX_PACKET}",))
    b.start()
    yield b
    b.stop()


@pytest.fixture
def service(small_broker, tmp_path):
    s = Service(small_broker, tmp_path)
    yield s
    s.stop_quietly()


class App5:
    def __init__(self, port, app_id):
        self.messages = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{app_id}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic):
        self.client.subscribe(topic, qos=1)

    def ask(self, topic, body, response_topic=None, correlation=None):
        props = Properties(PacketTypes.PUBLISH)
        if response_topic:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        info = self.client.publish(topic, json.dumps(body), qos=1, properties=props)
        info.wait_for_publish(10)

    def take(self):
        return self.messages.get(timeout=10)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def temperature(n):
    return {"device_id": "busy", "temperature": 20.0 + n / 100, "humidity": 50.0, "status": "LOW",
            "timestamp": f"{DAY}T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"}


def test_replies_fit_the_brokers_maximum_packet_size_and_the_service_stays_connected(service, small_broker):
    service.start().wait_ready()
    devices, app = MqttClient(small_broker.port), App5(small_broker.port, "small")
    try:
        app.subscribe(f"home/status/{service.client_id}")
        app.subscribe("home/datatemp/small/#")
        for n in range(300):
            devices.publish("home/temperature", temperature(n), wait=(n % 100 == 99))
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 300)

        # The seed's request for a day of 300 readings (~25 KB): pages that each fit.
        records, body, pages = [], {"device_id": "busy", "date": DAY}, 0
        while True:
            app.ask("home/gettemp/small", body, "home/datatemp/small/pages", b"p")
            message = app.take()
            while message.topic.startswith("home/status/"):
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

        log = service.log()
        assert "reconnected" not in log and "lost the MQTT broker connection" not in log
        states = []
        while not app.messages.empty():
            m = app.messages.get()
            if m.topic.startswith("home/status/") and m.payload:
                states.append(json.loads(m.payload)["state"])
        assert "offline" not in states
        assert service.proc.poll() is None
    finally:
        devices.close()
        app.close()
