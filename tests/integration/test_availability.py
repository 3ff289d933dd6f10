"""Liveness end to end against a real Mosquitto, with a short stale_after: every change of a device's
state is published retained on home/availability/{type}/{device_id}, logged once, counted in the
stats and kept in the catalogue, across a restart."""

from builders import power, temperature
from conftest import MqttClient, wait_until

SETTINGS = """
[devices]
temperature_stale_after = 1.5
power_stale_after = "auto"
min_stale_after = 1
[status]
stats_interval = 1
"""


def availability(watcher):
    """The next availability message: (topic, payload)."""
    while True:
        topic, payload = watcher.take(timeout=20)
        if topic.startswith("home/availability/"):
            return topic, payload


def test_a_silent_device_goes_stale_and_comes_back_and_each_change_is_published_once(db_service, client, tmp_path):
    service = db_service
    config = tmp_path / "site.toml"
    config.write_text(SETTINGS)
    service.start("--config", str(config)).wait_ready()
    watcher = MqttClient(service.broker.port)
    try:
        watcher.subscribe("home/availability/#")
        client.subscribe_replies("app")
        client.publish("home/temperature", temperature("t1", 1, "2026-04-01"))
        topic, live = availability(watcher)
        assert topic == "home/availability/temperature/t1"
        assert live["state"] == "live" and live["last_seen"] == "2026-04-01T00:00:01" and live["received_at"]
        topic, stale = availability(watcher)  # 1.5 s of silence
        assert topic == "home/availability/temperature/t1" and stale == {**live, "state": "stale"}
        wait_until(lambda: "temperature device t1 is stale" in service.log(), what="the WARNING")
        [entry] = client.request("devices", "app", {})["devices"]
        assert entry["state"] == "stale"
        client.publish("home/temperature", temperature("t1", 2, "2026-04-01"))
        topic, back = availability(watcher)
        assert back["state"] == "live" and back["last_seen"] == "2026-04-01T00:00:02"
        wait_until(lambda: "temperature device t1 is live again" in service.log(), what="the INFO line")
        # power is "auto": three times the device's usual interval, here at least 1 s
        client.publish("home/power", power("p1", "EB_ON", "2026-04-01T00:00:00"))
        assert availability(watcher)[0] == "home/availability/power/p1"
        wait_until(lambda: (s := stats(watcher, service)) is not None and s["availability"]["went_stale"] >= 2,
                   what="the stats to count both stale devices")
        assert service.log().count("temperature device t1 is stale") == 2  # once per episode
    finally:
        watcher.close()
    # A restart: what is stale stays stale (kept in the catalogue), and is not announced again.
    assert service.terminate() == 0
    service.start("--config", str(config)).wait_ready()
    [t1] = [e for e in client.request("devices", "app", {})["devices"] if e["device_id"] == "t1"]
    assert t1["state"] == "stale"
    retained = MqttClient(service.broker.port)
    try:
        retained.subscribe("home/availability/temperature/t1")
        assert retained.take(timeout=10)[1]["state"] == "stale"  # the broker kept it
        # a device that goes stale after this start: by then t1 would have been announced again
        retained.subscribe("home/availability/temperature/t2")
        client.publish("home/temperature", temperature("t2", 1, "2026-04-01"))
        assert availability(retained)[1]["state"] == "live" and availability(retained)[1]["state"] == "stale"
    finally:
        retained.close()
    assert "temperature device t2 is stale" in service.log() and "device t1 is" not in service.log()


def stats(watcher, service):
    watcher.subscribe(f"home/stats/{service.client_id}")
    while True:
        topic, payload = watcher.take(timeout=20)
        if topic.startswith("home/stats/"):
            return payload
