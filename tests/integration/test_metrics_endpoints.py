"""/metrics, /healthz and /readyz of a running service ([metrics] settings), against a real Mosquitto:
the numbers after a known sequence of readings and requests, readiness while the broker is down and
after, and an address other machines reach refused unless the settings say so."""

import subprocess
import sys
import urllib.error
import urllib.request

from builders import temperature
from conftest import ROOT, Service, free_port, wait_until
from prometheus_client.parser import text_string_to_metric_families


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def metrics(port: int) -> dict:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_count_what_happened_and_readyz_follows_the_broker(broker, tmp_path, client):
    port = free_port()
    service = Service(broker, tmp_path, METRICS_LISTEN=f"127.0.0.1:{port}")
    try:
        service.start().wait_ready()
        assert get(port, "/healthz") == (200, "ok: the process is alive\n")
        wait_until(lambda: get(port, "/readyz")[0] == 200, what="/readyz to say ready")
        for n in range(5):
            client.publish("home/temperature", temperature("t1", n))
        client.publish("home/temperature", {**temperature("t1", 9), "humidity": 101})  # invalid
        client.publish("home/temperature", temperature("t1", 9, "1999-12-31"))  # a clock reset
        client.subscribe_replies("app")
        assert "records" in client.request("temp", "app", {"device_id": "t1", "date": "2026-04-01"})
        assert client.request("temp", "app", {"device_id": "t1", "date": "2026-02-30"})["error"]["code"] == \
            "invalid_field"
        assert "devices" in client.request("devices", "app", {})
        expected = {
            ("mqtt_client_readings_received_total", (("type", "temperature"),)): 7,
            ("mqtt_client_readings_stored_total", (("type", "temperature"),)): 5,
            ("mqtt_client_readings_rejected_total", (("reason", "invalid"), ("type", "temperature"))): 1,
            ("mqtt_client_readings_rejected_total", (("reason", "clock"), ("type", "temperature"))): 1,
            ("mqtt_client_requests_total", (("kind", "temperature"), ("outcome", "ok"))): 1,
            ("mqtt_client_requests_total", (("kind", "temperature"), ("outcome", "invalid_field"))): 1,
            ("mqtt_client_requests_total", (("kind", "devices"), ("outcome", "ok"))): 1,
            ("mqtt_client_reply_duration_seconds_count", ()): 3,
            ("mqtt_client_devices", (("state", "live"), ("type", "temperature"))): 1,
            ("mqtt_client_broker_connections_total", ()): 1,
        }
        wait_until(lambda: {k: metrics(port).get(k) for k in expected} == expected, 20,
                   what="the metrics to count the readings and requests")
        assert metrics(port)[("mqtt_client_commits_total", ())] >= 1

        broker.stop()
        wait_until(lambda: get(port, "/readyz") == (503, "not ready: not connected to the MQTT broker\n"),
                   what="/readyz to say not ready while the broker is down")
        assert get(port, "/healthz")[0] == 200  # alive all the same
        broker.start()
        wait_until(lambda: get(port, "/readyz")[0] == 200, 30, what="/readyz to say ready again")
        wait_until(lambda: metrics(port)[("mqtt_client_broker_connections_total", ())] == 2,
                   what="the reconnection counted")
    finally:
        service.stop_quietly()


def test_an_address_other_machines_reach_is_refused_unless_the_settings_say_so(broker, tmp_path):
    port = free_port()
    env = {"METRICS_LISTEN": f"0.0.0.0:{port}", "DATABASE_PATH": str(tmp_path / "x.db"), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run([sys.executable, "system.py", "--check-config"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "metrics.listen (0.0.0.0:" in refused.stderr, refused.stderr
    settings = tmp_path / "remote.toml"
    settings.write_text("[metrics]\nallow_remote = true\n")
    service = Service(broker, tmp_path, METRICS_LISTEN=f"0.0.0.0:{port}")
    try:
        service.start("--config", str(settings)).wait_ready()
        assert get(port, "/healthz")[0] == 200
    finally:
        service.stop_quietly()


def test_a_port_in_use_leaves_the_service_running_without_metrics(broker, tmp_path):
    port = free_port()
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = Service(broker, tmp_path / "first", METRICS_LISTEN=f"127.0.0.1:{port}")
    second = Service(broker, tmp_path / "second", METRICS_LISTEN=f"127.0.0.1:{port}")
    try:
        first.start().wait_ready()
        second.start().wait_ready()  # its own work goes on
        second.wait_online(1)
        assert get(port, "/healthz")[0] == 200  # the first one's
    finally:
        second.stop_quietly()
        first.stop_quietly()
