"""Health and visibility: the retained status topic with its last will, the periodic stats, and
`python system.py --check-config`."""

import json
import subprocess
import sys

from builders import power
from conftest import ROOT, MqttClient, wait_until


def check_config(env, *args):
    return subprocess.run([sys.executable, "system.py", "--check-config", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_check_config_passes_when_the_database_and_broker_are_usable(broker, tmp_path):
    result = check_config({"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
                           "DATABASE_PATH": str(tmp_path / "d.db")})
    assert result.returncode == 0, result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok", "ok", "ok"]
    assert f"{tmp_path}/d.db does not exist yet; it will be created" in result.stdout
    assert not (tmp_path / "d.db").exists()  # a check changes nothing


def test_check_config_names_each_problem_and_exits_1_or_2_for_bad_settings(tmp_path, broker):
    closed_port = broker.port
    broker.stop()
    result = check_config({"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(closed_port),
                           "DATABASE_PATH": str(tmp_path / "missing" / "d.db")})
    assert result.returncode == 1
    assert f"FAILED  database: {tmp_path}/missing does not exist" in result.stdout
    assert f"FAILED  broker: cannot reach 127.0.0.1:{closed_port}" in result.stdout
    result = check_config({"MQTT_BROKER_PORT": "none"})
    assert result.returncode == 2 and "FAILED  settings: MQTT_BROKER_PORT='none'" in result.stderr


def statuses(watcher, client_id):
    """Every status message seen so far for that service (decoded)."""
    seen = []
    while not watcher.messages.empty():
        topic, payload = watcher.messages.get()
        if topic == f"home/status/{client_id}":
            seen.append(json.loads(payload))
    return seen


def test_the_status_topic_says_online_then_offline_on_a_clean_stop_and_by_last_will_on_a_crash(service, broker):
    watcher = MqttClient(broker.port)
    watcher.subscribe(f"home/status/{service.client_id}")
    seen = []
    service.start().wait_ready()
    wait_until(lambda: seen.extend(statuses(watcher, service.client_id)) or seen, what="online")
    assert seen[-1]["state"] == "online" and seen[-1]["version"] and seen[-1]["started_at"]
    assert service.terminate() == 0
    wait_until(lambda: seen.extend(statuses(watcher, service.client_id)) or seen[-1]["state"] == "offline")
    assert seen[-1]["reason"] == "stopped"
    service.start().wait_ready()
    wait_until(lambda: seen.extend(statuses(watcher, service.client_id)) or seen[-1]["state"] == "online")
    service.kill()  # no goodbye: the broker publishes our last will
    wait_until(lambda: seen.extend(statuses(watcher, service.client_id)) or seen[-1]["state"] == "offline")
    assert seen[-1]["reason"] == "connection lost"
    late = MqttClient(broker.port)  # retained: a newcomer learns the state at once
    late.subscribe(f"home/status/{service.client_id}")
    topic, status = late.take()
    assert status["state"] == "offline"
    late.close()
    watcher.close()


def test_stats_are_published_retained_and_logged(service, client, tmp_path):
    config = tmp_path / "stats.toml"
    config.write_text("[status]\nstats_interval = 1.0\nlog_interval = 1.0\n")
    service.start("--config", str(config)).wait_ready()
    for i in range(3):
        client.publish("home/power", power("s", "EB_ON", f"2026-05-0{i + 1}T00:00:00"))
    client.publish("home/power", b"nonsense")
    client.subscribe_replies("statsapp")
    client.request("power", "statsapp", {"device_id": "s", "date": "2026-05-01"})
    client.request("power", "statsapp", {"device_id": "s"})  # an error reply
    client.subscribe(f"home/stats/{service.client_id}")

    def latest():
        stats = None
        while not client.messages.empty():
            topic, payload = client.messages.get()
            if topic == f"home/stats/{service.client_id}":
                stats = json.loads(payload)
        return stats if stats and stats["requests"]["answered"] == 2 and stats["stored"]["power"] == 3 else None

    stats = wait_until(latest, 20, what="stats with everything counted")
    assert stats["rejected"] == 1 and stats["requests"]["errors"] == 1 and stats["connected"]
    assert stats["stored"] == {"temperature": 0, "power": 3, "fingerprint": 0}
    assert stats["writer_backlog"] == 0 and stats["database_bytes"] > 0 and "power" in stats["last_stored_at"]
    wait_until(lambda: "stats: stored temperature 0, power 3, fingerprint 0; rejected 1; requests 2 (1 errors)"
               in service.log(), 10, what="the stats in the log")
