"""Two instances in one shared group (MQTT 5 shared subscriptions) over one database (one SQLite
file, or one PostgreSQL server as on several machines) and one Mosquitto, one of them killed mid-load and started again as systemd would: every reading stored
once, the work split between them, every request answered once, and power replies right although
consecutive events of a device went to different instances, in any order."""

import json
import queue
import random
import re

import paho.mqtt.client as mqtt
from builders import power
from conftest import MqttClient, Service, wait_until


def test_two_instances_share_the_work_and_survive_one_being_killed(broker, tmp_path, database_env):
    config = tmp_path / "shared.toml"
    config.write_text("[status]\nstats_interval = 1.0\n")
    first = Service(broker, tmp_path, MQTT_SHARED_GROUP="site", **database_env)
    second = Service(broker, tmp_path, MQTT_SHARED_GROUP="site", **database_env)
    second.output, second.log_path = tmp_path / "second.out", tmp_path / "second.log"
    instances = (first, second)
    device = MqttClient(broker.port)
    app = MqttClient(broker.port)
    try:
        for s in instances:
            s.start("--config", str(config)).wait_ready()
        total = 3000
        for i in range(total):
            device.publish("home/temperature", {"device_id": f"t{i % 7}", "temperature": float(i), "humidity": 50.0,
                                                "status": "LOW", "timestamp": f"2026-05-01T00:{i // 60 % 60:02d}:{i % 60:02d}.{i:04d}"},
                           wait=False)
            if i == total // 2:
                second.kill()  # mid-load: what it held unacknowledged stays with the broker for its session
                second.start("--config", str(config))
        second.wait_ready()  # beside an instance that is committing: start-up waits its turn, never fails
        wait_until(lambda: first.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == total, timeout=60,
                   what="every reading stored")
        assert first.query("SELECT COUNT(DISTINCT temperature) FROM temperature_logs")[0][0] == total

        # Both did part of it (each announces what it stored on its own stats topic).
        stats = MqttClient(broker.port)
        stats.subscribe("home/stats/#")
        stored = {}
        wait_until(lambda: _collect(stats, stored) and len(stored) == 2 and all(stored.values()),
                   what="both instances' stats")
        stats.close()

        # Power events of one device, out of order, spread over both instances.
        events = [("EB_ON", "08:00"), ("DG_ON", "09:00"), ("EB_OFF", "10:00"), ("DG_OFF", "11:00"),
                  ("EB_ON", "12:00"), ("DG_ON", "13:00")]
        for status, at in random.Random(4).sample(events, len(events)):
            device.publish("home/power", power("p1", status, f"2026-05-01T{at}:00"))
        wait_until(lambda: first.query("SELECT COUNT(*) FROM power_status_logs")[0][0] == len(events))

        # Requests: each answered once, by one instance or the other.
        app.subscribe("home/datatemp/phone")
        app.subscribe("home/datapower/phone")
        for n in range(40):
            app.publish("home/gettemp/phone", {"device_id": "t1", "date": "2026-05-01", "request_id": f"r{n}"})
        ids = [app.take()[1]["request_id"] for _ in range(40)]
        assert sorted(ids) == sorted(f"r{n}" for n in range(40))
        replies = app.request("power", "phone", {"device_id": "p1", "date": "2026-05-01"})
        assert [(r["ebstatus"], r["dgstatus"]) for r in replies["records"]] == \
            [("ON", ""), ("ON", "ON"), ("OFF", "ON"), ("OFF", "OFF"), ("ON", "OFF"), ("ON", "ON")]
        assert app.messages.empty()
    finally:
        device.close()
        app.close()
        for s in instances:
            s.stop_quietly()


def session_present(broker, client_id: str) -> bool:
    """Whether the broker keeps a session for `client_id` (asked without creating one)."""
    answer = queue.Queue()
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    probe.on_connect = lambda client, userdata, flags, reason, properties: answer.put(flags.session_present)
    probe.connect("127.0.0.1", broker.port, clean_start=False)  # Session Expiry 0: ends with this connection
    probe.loop_start()
    try:
        return answer.get(timeout=10)
    finally:
        probe.disconnect()
        probe.loop_stop()


def retained(broker) -> set[str]:
    """The status and stats topics that hold a retained message: the broker sends those on
    subscribing, ahead of a message published after the subscriptions."""
    client = MqttClient(broker.port)
    try:
        client.subscribe("home/status/#")
        client.subscribe("home/stats/#")
        client.subscribe("test/end")
        client.publish("test/end", {})
        topics = set()
        while (topic := client.take()[0]) != "test/end":
            topics.add(topic)
        return topics
    finally:
        client.close()


def _collect(client, stored: dict) -> bool:
    while not client.messages.empty():
        topic, payload = client.messages.get()
        stored[topic] = json.loads(payload)["stored"]["temperature"]
    return True


def test_retiring_an_instance_hands_over_its_share_and_ends_its_session(broker, tmp_path, database_env):
    first = Service(broker, tmp_path, MQTT_SHARED_GROUP="site", **database_env)
    second = Service(broker, tmp_path, MQTT_SHARED_GROUP="site", **database_env)
    second.output, second.log_path = tmp_path / "second.out", tmp_path / "second.log"
    device = MqttClient(broker.port)
    app = MqttClient(broker.port)
    config = tmp_path / "shared.toml"
    config.write_text("[status]\nstats_interval = 1.0\n")
    try:
        for s in (first, second):
            s.start("--config", str(config)).wait_ready()
        wait_until(lambda: retained(broker) >= {f"home/status/{second.client_id}", f"home/stats/{second.client_id}"},
                   what="its retained status and stats")
        assert second.terminate() == 0  # `systemctl stop`: its session lives on, and gets its share
        app.subscribe("home/datatemp/phone")
        for i in range(600):
            device.publish("home/temperature", {"device_id": "t1", "temperature": float(i), "humidity": 50.0,
                                                "status": "LOW", "timestamp": f"2026-05-01T00:{i // 60:02d}:{i % 60:02d}"},
                           wait=False)
        for n in range(20):
            app.publish("home/gettemp/phone", {"device_id": "t1", "date": "2026-05-01", "request_id": f"r{n}"})

        assert second.start("--config", str(config), "--retire").proc.wait(60) == 0, second.log()
        handed_over = int(re.search(r"retired: (\d+) messages", second.log()).group(1))
        assert handed_over > 0  # the broker had kept part of the readings and requests for it
        wait_until(lambda: first.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 600, what="all readings")
        ids = [app.take()[1]["request_id"] for _ in range(20)]
        assert sorted(ids) == sorted(f"r{n}" for n in range(20))

        # Its session is gone: every new reading and request goes to the instance that stays.
        for i in range(600, 700):
            device.publish("home/temperature", {"device_id": "t1", "temperature": float(i), "humidity": 50.0,
                                                "status": "LOW", "timestamp": f"2026-05-01T01:{i // 60 % 60:02d}:{i % 60:02d}"},
                           wait=False)
        wait_until(lambda: first.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 700, what="new readings")
        for n in range(20, 30):
            assert app.request("temp", "phone", {"device_id": "t1", "date": "2026-05-01", "request_id": f"r{n}"}
                               )["request_id"] == f"r{n}"
        assert not session_present(broker, second.client_id)
        # ... and so are its retained status and stats.
        assert retained(broker) == {f"home/status/{first.client_id}", f"home/stats/{first.client_id}"}
        assert app.messages.empty()
    finally:
        device.close()
        app.close()
        for s in (first, second):
            s.stop_quietly()
