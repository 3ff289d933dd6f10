"""A fleet, not a message: thousands of devices appearing at once and then all going silent at once,
against a real Mosquitto that allows few unacknowledged publishes (its max_inflight_messages: the
default 20, and 1). Every device's `live` and then its `stale` is delivered, the link never crashes,
and the retained status still says the first connection of the first start."""

import json
import queue

import paho.mqtt.client as mqtt
import pytest
from builders import temperature
from conftest import Broker, Service, wait_until

FLEET = 2000
SETTINGS = """
[devices]
temperature_stale_after = 3
[status]
stats_interval = 1
"""


class Watcher:
    """Collects the latest retained state of every availability topic, and the stats."""

    def __init__(self, port: int):
        self.states: dict[str, str] = {}
        self.stats: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        if message.topic.startswith("home/stats/"):
            self.stats.put(json.loads(message.payload))
        elif message.payload:
            self.states[message.topic] = json.loads(message.payload)["state"]

    def subscribe(self, *topics: str) -> None:
        for topic in topics:
            self.client.subscribe(topic, qos=1)

    def count(self, state: str) -> int:
        return sum(s == state for s in list(self.states.values()))

    def latest_stats(self) -> dict:
        stats = self.stats.get(timeout=10)
        while not self.stats.empty():
            stats = self.stats.get()
        return stats

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def publish_fleet(port: int, devices: int) -> None:
    """One reading from each of `devices` new devices, published as fast as the broker takes them."""
    fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    fleet.max_inflight_messages_set(200)
    fleet.max_queued_messages_set(0)
    fleet.connect("127.0.0.1", port)
    fleet.loop_start()
    try:
        infos = [fleet.publish("home/temperature", json.dumps(temperature(f"fleet-{n:05d}", 1, "2026-04-01")), qos=1)
                 for n in range(devices)]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        fleet.loop_stop()
        fleet.disconnect()


@pytest.mark.parametrize("inflight", [20, 1])
def test_a_fleet_appearing_and_going_silent_at_once_is_announced_in_full_without_a_link_crash(tmp_path, inflight):
    broker = Broker(tmp_path, extra=(f"max_inflight_messages {inflight}",))
    broker.start()
    service = Service(broker, tmp_path)
    config = tmp_path / "site.toml"
    config.write_text(SETTINGS)
    watcher = Watcher(broker.port)
    try:
        service.start("--config", str(config)).wait_ready()
        watcher.subscribe("home/availability/#", f"home/stats/{service.client_id}")
        publish_fleet(broker.port, FLEET)
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == FLEET, 60,
                   what="every reading stored")
        # every device announced; after 3 s of silence, every one stale (a device's latest state is
        # what counts: a `live` still waiting in the outbox when it went stale is replaced by `stale`)
        wait_until(lambda: watcher.count("stale") == FLEET, 90, what=f"{FLEET} devices announced stale")
        assert len(watcher.states) == FLEET
        stats = wait_until(lambda: (s := watcher.latest_stats())["availability"]["went_stale"] == FLEET and s, 30,
                           what="the stats to count every stale device")
        assert stats["availability"]["new_devices"] == FLEET and stats["availability"]["stale_now"] == FLEET
        assert stats["link_restarts"] == 0 and stats["connections"] == 1 and stats["outbox"]["dropped"] == 0
        status = service.status()
        assert status["state"] == "online" and status["connections"] == 1
        assert service.proc.poll() is None
        assert service.terminate() == 0
    finally:
        watcher.close()
        service.stop_quietly()
        broker.stop()
