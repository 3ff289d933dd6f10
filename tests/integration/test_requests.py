"""Requests beyond the seed's, end to end against a real Mosquitto, from MQTT 5 and MQTT 3.1.1
apps: response topics with correlation data, request ids, paging with cursors (stable while
readings arrive), the latest reading, and a time window."""

import json
import subprocess
import sys
import threading

from builders import fingerprint, power, second_of, temperature
from conftest import ROOT, Mqtt5App, MqttClient, Watcher, wait_until

from scripts.request import arguments

DAY = "2026-04-01"


def reading(n, device="t1", day=DAY):
    return temperature(device, n, day, value=float(n))


def store(db_service, client, readings, table="temperature_logs"):
    before = db_service.query(f"SELECT COUNT(*) FROM {table}")[0][0]
    for r in readings:
        client.publish(f"home/{'temperature' if table == 'temperature_logs' else 'power'}", r, wait=False)
    wait_until(lambda: db_service.query(f"SELECT COUNT(*) FROM {table}")[0][0] == before + len(readings),
               what="the readings stored")


def all_pages(client, stem, app_id, body, max_pages=1000):
    pages = []
    while True:
        reply = client.request(stem, app_id, body)
        assert "error" not in reply, reply
        assert reply["count"] == len(reply["records"])
        pages.append(reply)
        if "next" not in reply:
            return pages
        body = {**body, "cursor": reply["next"]}
        assert len(pages) < max_pages


def test_an_mqtt5_request_is_answered_on_its_response_topic_with_its_correlation_data(db_service, broker, client):
    db_service.start().wait_ready()
    store(db_service, client, [reading(60)])
    app = Mqtt5App(broker.port, "app5")
    try:
        app.subscribe("home/datatemp/app5/#")
        app.ask("home/gettemp/app5", {"device_id": "t1", "date": DAY}, "home/datatemp/app5/screen-2", b"\x00\x01c")
        reply = app.messages.get(timeout=10)
        assert reply.topic == "home/datatemp/app5/screen-2"
        assert reply.properties.CorrelationData == b"\x00\x01c"
        assert json.loads(reply.payload)["count"] == 1
        # Outside the app's own reply topics, or past the limits every common broker enforces:
        # refused, logged, never published there; the error goes to the app's own reply topic.
        bad = ("home/datatemp/other-app", "devices/t1/set", "home/datatemp/app5/#", "home/datatempx/app5",
               "home/datatemp/app5/" + "/".join("l" * 6), "home/datatemp/app5/" + "x" * 240)
        for i, topic in enumerate(bad):
            app.ask("home/gettemp/app5", {"device_id": "t1", "date": DAY, "request_id": f"bad-{i}"}, topic, b"x")
        for i in range(len(bad)):
            refused = app.messages.get(timeout=10)
            assert refused.topic == "home/datatemp/app5" and refused.properties.CorrelationData == b"x"
            body = json.loads(refused.payload)
            assert body["error"]["code"] == "invalid_response_topic" and body["request_id"] == f"bad-{i}"
            assert (body["device_id"], body["date"]) == ("t1", DAY)
        log = db_service.log()
        assert log.count("is not one of app app5's reply topics") == 3
        assert "holds a wildcard" in log and "levels, over the 8-level limit" in log
        assert "bytes, over the 256-byte limit" in log
        app.ask("home/gettemp/app5", {"device_id": "t1", "date": DAY})  # no response topic: the seed's
        assert app.messages.get(timeout=10).topic == "home/datatemp/app5"
        assert app.messages.empty()
        assert "reconnected" not in db_service.log()
    finally:
        app.close()


def test_a_request_id_is_echoed_in_replies_and_errors(db_service, client):
    db_service.start().wait_ready()
    client.subscribe_replies("app3")
    reply = client.request("temp", "app3", {"device_id": "t1", "date": DAY, "request_id": "q-17"})
    assert reply == {"device_id": "t1", "date": DAY, "count": 0, "records": [], "request_id": "q-17"}
    error = client.request("power", "app3", {"device_id": "p1", "date": "2026-02-30", "request_id": "q-18"})
    assert error["request_id"] == "q-18" and error["error"]["code"] == "invalid_field"
    # Without one, the seed's reply exactly.
    assert client.request("temp", "app3", {"device_id": "t1", "date": DAY}) == \
        {"device_id": "t1", "date": DAY, "count": 0, "records": []}


def test_pages_neither_skip_nor_repeat_records_while_new_readings_arrive(db_service, client):
    db_service.start().wait_ready()
    store(db_service, client, [reading(n) for n in range(0, 3000, 10)])  # 300 readings, every 10 s
    client.subscribe_replies("pager")
    body = {"device_id": "t1", "date": DAY, "limit": 100}
    first = client.request("temp", "pager", body)
    assert first["count"] == 100 and "next" in first
    # New readings, before and after where the pages have got to.
    store(db_service, client, [reading(5), reading(2995), reading(4000)])
    rest = all_pages(client, "temp", "pager", {**body, "cursor": first["next"]})
    stamps = [r["timestamp"] for page in [first, *rest] for r in page["records"]]
    assert len(stamps) == len(set(stamps)) and stamps == sorted(stamps)
    expected = {reading(n)["timestamp"] for n in [*range(0, 3000, 10), 2995, 4000]}
    assert set(stamps) == expected  # only the one that arrived behind the pages (00:00:05) is not there
    assert [p["count"] for p in rest] == [100, 100, 2]


def test_a_day_over_the_reply_size_cap_comes_in_pages_and_power_state_carries_across(db_service, tmp_path, client):
    config = tmp_path / "small.toml"
    config.write_text("[queries]\nmax_reply_bytes = 2048\n")
    db_service.start("--config", str(config)).wait_ready()
    try:
        events = ["EB_ON", "DG_ON", "EB_OFF", "DG_OFF"]
        store(db_service, client, [power("p1", "DG_ON", "2026-03-31T23:00:00")]
              + [{"device_id": "p1", "status": events[n % 4], "timestamp": second_of(DAY, n * 7)}
                 for n in range(200)], table="power_status_logs")
        client.subscribe("home/datapower/big")
        collected = []  # the size of every reply

        def on_message(c, u, m):
            collected.append(len(m.payload))
            client.messages.put((m.topic, m.payload))
        client.client.on_message = on_message
        pages = all_pages(client, "power", "big", {"device_id": "p1", "date": DAY})
        assert len(pages) > 5 and max(collected) <= 2048
        records = [r for p in pages for r in p["records"]]
        assert len(records) == 200
        # Each record as a one-page reply would show it: both sources' state, carried across pages.
        eb, dg = "", "ON"
        for n, record in enumerate(records):
            status = events[n % 4]
            eb, dg = (status[3:], dg) if status.startswith("EB") else (eb, status[3:])
            assert (record["ebstatus"], record["dgstatus"]) == (eb, dg), n
    finally:
        db_service.terminate()


def test_the_latest_reading_of_each_device_type(db_service, client):
    db_service.start().wait_ready()
    store(db_service, client, [reading(100), reading(50), reading(7, day="2026-04-02")])
    client.publish("home/power", power("p1", "DG_ON", "2026-04-01T08:00:00"))
    client.publish("home/power", power("p1", "EB_OFF", "2026-04-01T09:00:00"))
    client.publish("home/fingerprint", fingerprint("f1", "u9", "FAIL", "2026-03-30T07:00:00"))
    wait_until(lambda: db_service.query("SELECT COUNT(*) FROM power_status_logs")[0][0] == 2
               and db_service.query("SELECT COUNT(*) FROM fingerprint_logs")[0][0] == 1)
    client.subscribe_replies("now")
    latest = client.request("temp", "now", {"device_id": "t1", "latest": True})
    assert latest == {"device_id": "t1", "date": "2026-04-02", "count": 1,
                      "records": [{"temperature": 7.0, "humidity": 50.0, "status": "LOW",
                                   "timestamp": "2026-04-02T00:00:07"}]}
    latest_power = client.request("power", "now", {"device_id": "p1", "latest": True, "request_id": "p"})
    assert latest_power["records"] == [{"ebstatus": "OFF", "dgstatus": "ON", "timestamp": "2026-04-01T09:00:00"}]
    assert latest_power["request_id"] == "p"
    finger = client.request("fingerprint", "now", {"device_id": "f1", "latest": True})
    assert finger["date"] == "2026-03-30" and finger["records"][0]["user_id"] == "u9"
    assert client.request("temp", "now", {"device_id": "nobody", "latest": True}) == \
        {"device_id": "nobody", "date": None, "count": 0, "records": []}


def test_a_time_window_narrows_the_day(db_service, client):
    db_service.start().wait_ready()
    store(db_service, client, [reading(n) for n in (3599, 3600, 3601, 7200, 7201)]
          + [{**reading(0), "timestamp": f"{DAY}T02:00:00.500+05:30"}])
    client.subscribe_replies("win")
    reply = client.request("temp", "win", {"device_id": "t1", "date": DAY, "from": "01:00:00", "to": "02:00:00"})
    assert [r["timestamp"] for r in reply["records"]] == \
        [f"{DAY}T01:00:00", f"{DAY}T01:00:01", f"{DAY}T02:00:00", f"{DAY}T02:00:00.500000+05:30"]


def test_the_request_cli_prints_a_day_across_pages_the_latest_and_errors(db_service, broker, client):
    db_service.start().wait_ready()
    store(db_service, client, [reading(n) for n in (60, 120, 180)])

    def cli(*args):
        return subprocess.run([sys.executable, "scripts/request.py", "--port", str(broker.port), "--host", "127.0.0.1",
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    day = cli("temperature", "t1", DAY, "--limit", "2", "--all-pages")
    assert day.returncode == 0, day.stderr
    lines = day.stdout.splitlines()
    assert lines[0] == f"temperature t1 {DAY}: 3 records in 2 replies"
    assert lines[1].split() == ["temperature", "humidity", "status", "timestamp"]
    assert [line.split()[-1] for line in lines[3:]] == [f"{DAY}T00:01:00", f"{DAY}T00:02:00", f"{DAY}T00:03:00"]
    latest = cli("temperature", "t1", "--latest", "--json")
    assert json.loads(latest.stdout)["records"][0]["timestamp"] == f"{DAY}T00:03:00"
    bad = cli("temperature", "t1", "2026-02-30")
    assert bad.returncode == 1 and "error invalid_field: field 'date'" in bad.stderr
    summary = cli("temperature", "t1", "--summary", "hour", "--from-date", DAY)
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert lines[0] == f"temperature t1 by the hour, {DAY} to {DAY}: 3 readings in 24 buckets"
    assert lines[1].split()[:4] == ["start", "readings", "temperature.min", "temperature.max"]
    assert lines[3].split()[:4] == [f"{DAY}T00:00:00", "3", "60.0", "180.0"] and len(lines) == 3 + 24
    devices = cli("devices", "--type", "temperature")
    assert devices.returncode == 0, devices.stderr
    assert devices.stdout.splitlines()[0] == "1 devices" and devices.stdout.splitlines()[3].split()[:4] == \
        ["temperature", "t1", "live", "3"]
    for args in (("temperature", "t1", DAY, "--limit", "2", "--all-pages"), ("temperature", "t1", "--latest"),
                 ("temperature", "t1", "--summary", "day", "--from-date", DAY), ("devices",)):
        checked = cli(*args, "--check")
        assert checked.returncode == 0 and "each as docs/asyncapi.yaml says" in checked.stderr, checked.stderr


def test_the_request_cli_check_reports_a_reply_that_is_not_as_documented(broker):
    """--check against a stand-in service whose reply has a misspelt field."""
    fake = MqttClient(broker.port)
    fake.subscribe("home/gettemp/+")
    answered = threading.Event()

    def answer():
        topic, request = fake.take(30)
        reply = {"device_id": "t1", "date": DAY, "count": 1, "request_id": request["request_id"],
                 "records": [{"temperature": 21.5, "humidty": 40.0, "status": "LOW", "timestamp": f"{DAY}T00:01:00"}]}
        fake.publish(f"home/datatemp/{topic.rsplit('/', 1)[1]}", reply)
        answered.set()
    threading.Thread(target=answer, daemon=True).start()
    try:
        run = subprocess.run([sys.executable, "scripts/request.py", "--port", str(broker.port), "--host", "127.0.0.1",
                              "temperature", "t1", DAY, "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        fake.close()
    assert answered.is_set() and run.returncode == 1
    assert "not as docs/asyncapi.yaml says" in run.stderr and "'humidty' was unexpected" in run.stderr
    for watcher in Watcher.watching:
        watcher.messages.clear()  # the stand-in's reply is wrong on purpose: not the service's


def test_the_request_cli_reads_the_broker_from_the_environment_as_the_service_does():
    """MQTT_TLS switches to 8883 unless MQTT_BROKER_PORT says otherwise; empty variables are unset;
    the app id is the user name (a broker secured with deploy/mosquitto/acl requires it)."""
    args = arguments(["temperature", "t1", "--latest"], {"MQTT_TLS": "true", "MQTT_TLS_CA_FILE": "/etc/ca.pem",
                                                          "MQTT_BROKER_PORT": "", "MQTT_USERNAME": "phone-anna"})
    assert (args.tls, args.port, args.ca_file, args.app_id) == (True, 8883, "/etc/ca.pem", "phone-anna")
    args = arguments(["temperature", "t1", "--latest"], {"MQTT_TLS": "true", "MQTT_BROKER_PORT": "9883"})
    assert (args.port, args.username) == (9883, None) and args.app_id.startswith("cli-")
    assert arguments(["devices"], {}).port == 1883
