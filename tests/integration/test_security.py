"""What the service itself enforces, end to end against a real Mosquitto: app ids that are plain
names, per-app authorization, per-app rate limits, literal matching of hostile device ids, and
credentials that never reach the logs."""

import statistics
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, Broker, MqttClient, Service, wait_until

TEMP = {"temperature": 21.0, "humidity": 40.0, "status": "LOW"}


def reading(device_id, second=0):
    return {"device_id": device_id, **TEMP, "timestamp": f"2026-03-01T10:00:{second:02d}"}


def config(tmp_path, text):
    path = tmp_path / "site.toml"
    path.write_text(text)
    return str(path)


def test_a_request_whose_app_id_is_not_a_plain_name_gets_no_reply(service, client):
    service.start().wait_ready()
    client.subscribe("home/datatemp/#")
    for app_id in ("bad.app", "app id", "caf\u00e9", "x" * 65):
        client.publish(f"home/gettemp/{app_id}", {"device_id": "t1", "date": "2026-03-01"})
    wait_until(lambda: service.log().count("an app id is 1-64 letters") == 4, what="four refusals logged")
    # A good request after them is answered; nothing came for the bad ones.
    client.publish("home/gettemp/good_app-1", {"device_id": "t1", "date": "2026-03-01"})
    topic, reply = client.take()
    assert topic == "home/datatemp/good_app-1" and reply["count"] == 0
    assert client.messages.empty()


def test_apps_read_only_the_devices_they_are_allowed(broker, tmp_path, client):
    service = Service(broker, tmp_path)
    service.start("--config", config(tmp_path, '[apps]\nreadable = { "phone-*" = ["temp_*", "door"] }\n'))
    try:
        service.wait_ready()
        client.publish("home/temperature", reading("temp_1"))
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
        client.subscribe_replies("phone-1")
        client.subscribe_replies("laptop")
        ok = client.request("temp", "phone-1", {"device_id": "temp_1", "date": "2026-03-01"})
        assert ok["count"] == 1
        for app_id, device_id in (("phone-1", "tempx"), ("phone-1", "boiler"), ("laptop", "temp_1")):
            reply = client.request("temp", app_id, {"device_id": device_id, "date": "2026-03-01"})
            assert reply["error"]["code"] == "forbidden" and reply["device_id"] == device_id, reply
        assert "app laptop may not read device temp_1" in service.log()
    finally:
        service.terminate()


def test_a_flooding_app_is_rate_limited_and_does_not_slow_the_others(broker, tmp_path):
    service = Service(broker, tmp_path)
    service.start("--config", config(tmp_path, "[apps]\nrate = 20.0\nburst = 40\n"))
    flood, polite = MqttClient(broker.port), MqttClient(broker.port)
    try:
        service.wait_ready()
        flood.subscribe("home/datatemp/flood")
        polite.subscribe("home/datatemp/polite")
        stop = threading.Event()

        def flooding():
            while not stop.is_set():
                flood.publish("home/gettemp/flood", {"device_id": "t1", "date": "2026-03-01"}, qos=0, wait=False)
                time.sleep(0.0005)

        flooder = threading.Thread(target=flooding)
        flooder.start()
        refused = []  # the flooder's replies, until one refuses it: the flood is noticed
        wait_until(lambda: refused.append(flood.take()[1]) or refused[-1].get("error", {}).get("code") == "rate_limited",
                   what="the flood refused")
        latencies = []
        for _ in range(40):
            started = time.monotonic()
            polite.publish("home/gettemp/polite", {"device_id": "t1", "date": "2026-03-01"})
            topic, reply = polite.take(timeout=10)
            latencies.append(time.monotonic() - started)
            assert "error" not in reply, reply
            time.sleep(0.1)  # 10 requests/s: within its rate
        stop.set()
        flooder.join()
        # every polite request answered with its data while the flood went on (how fast depends on the
        # machine: shown, not asserted)
        print(f"polite app's reply p95 during the flood: {statistics.quantiles(latencies, n=20)[-1] * 1000:.1f} ms")
        replies = refused
        while not flood.messages.empty():
            replies.append(flood.take()[1])
        codes = [r.get("error", {}).get("code") for r in replies]
        assert "rate_limited" in codes and None in codes  # its burst was answered, the rest refused
        # A refusal made before any query actor still echoes what the request said.
        assert all((r["device_id"], r["date"]) == ("t1", "2026-03-01") for r in replies)
    finally:
        stop.set()
        flood.close()
        polite.close()
        service.terminate()


HOSTILE = ["a'b", 'q"uote', "x'; DROP TABLE temperature_logs; --", "%", "_", "t_1", "tx1", "100%",
           "back\\slash", "\u65e5\u672c\u8a9e", "emoji \U0001F525", "semi;colon", "*", "[ab]"]


def test_hostile_device_ids_are_stored_and_matched_literally(service, client):
    service.start().wait_ready()
    for i, device_id in enumerate(HOSTILE):
        client.publish("home/temperature", reading(device_id, i))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == len(HOSTILE))
    stored = {row[0] for row in service.query("SELECT device_id FROM temperature_logs")}
    assert stored == set(HOSTILE)
    client.subscribe_replies("app")
    for i, device_id in enumerate(HOSTILE):  # '%' and '_' match only themselves: no LIKE wildcards
        reply = client.request("temp", "app", {"device_id": device_id, "date": "2026-03-01"})
        assert reply["device_id"] == device_id and reply["count"] == 1, reply
        assert reply["records"][0]["timestamp"] == f"2026-03-01T10:00:{i:02d}"


SENTINEL = "s3ntinel-Pa55word"


@pytest.fixture
def locked_broker(tmp_path):
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "svc", SENTINEL], check=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "device", "device-pw"], check=True)
    broker = Broker(tmp_path, extra=(f"password_file {passwords}",))
    broker.start()
    yield broker
    broker.stop()


def test_the_password_never_reaches_the_logs_even_at_debug(locked_broker, tmp_path):
    service = Service(locked_broker, tmp_path, MQTT_USERNAME="svc", MQTT_PASSWORD=SENTINEL, LOG_LEVEL="DEBUG")
    device = MqttClient(locked_broker.port, username="device", password="device-pw")
    try:
        service.start().wait_ready()
        device.publish("home/temperature", reading("t1"))
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
        assert service.terminate() == 0
        check = subprocess.run([sys.executable, "system.py", "--check-config"], cwd=ROOT, capture_output=True,
                               text=True, env={**service.env, "LOG_LEVEL": "DEBUG"}, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        # And refused: the wrong password is not logged either.
        wrong = Service(locked_broker, tmp_path / "wrong", MQTT_USERNAME="svc", MQTT_PASSWORD=SENTINEL + "-x",
                        LOG_LEVEL="DEBUG")
        (tmp_path / "wrong").mkdir()
        wrong.start()
        assert wrong.proc.wait(30) == 1
        texts = [service.log(), service.log_path.read_text(), check.stdout, check.stderr, wrong.log()]
        assert "Bad User Name or Password" in wrong.log() or "Not authorized" in wrong.log()
        for text in texts:
            assert SENTINEL not in text
        assert len(service.log()) > 1000, "DEBUG logging was on"
    finally:
        device.close()
        service.stop_quietly()
