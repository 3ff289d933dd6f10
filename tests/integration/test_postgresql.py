"""The service on PostgreSQL (DATABASE_URL), end to end with a real server and Mosquitto: the same
tables, identity and replies as on SQLite; nothing lost to SIGKILL; --check-config; retention;
and the URL's password never in the logs. (CI also runs the conformance suite on PostgreSQL.)"""

import gzip
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from builders import fingerprint, power
from conftest import ROOT, Service, wait_until

from actors.storage.schema import SCHEMA_VERSION

SENTINEL = "pg-s3ntinel-pw"  # the server trusts local connections and ignores it; it must not be logged


@pytest.fixture
def pg_service(broker, tmp_path, pg_url):
    url = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SENTINEL}@")
    service = Service(broker, tmp_path, DATABASE_URL=url, LOG_LEVEL="DEBUG")
    yield service
    service.stop_quietly()


def count(service, table):
    return service.query(f"SELECT COUNT(*) FROM {table}")[0][0]


def test_readings_replies_and_rejections_as_on_sqlite(pg_service, client):
    service = pg_service
    service.start().wait_ready()
    assert not (service.workdir / "mqtt_data.db").exists()
    reading = {"device_id": "t1", "temperature": 22.5, "humidity": 45.3, "status": "HIGH",
               "timestamp": "2026-01-22T14:30:00"}
    client.publish("home/temperature", reading)
    client.publish("home/temperature", reading)  # a redelivery: stored once
    client.publish("home/temperature", {**reading, "timestamp": "2026-01-22T09:00:00.250000+05:30"})
    client.publish("home/power", power("p1", "DG_ON", "2026-01-21T20:00:00"))
    client.publish("home/power", power("p1", "EB_OFF", "2026-01-22T08:00:00"))
    client.publish("home/fingerprint", fingerprint("f1", "u1", "PASS", "2026-01-22T07:00:00"))
    client.publish("home/temperature", b"\xff\xfe not json")
    wait_until(lambda: count(service, "temperature_logs") == 2 and count(service, "power_status_logs") == 2
               and count(service, "fingerprint_logs") == 1 and count(service, "rejected_messages") == 1)
    assert service.query("SELECT payload FROM rejected_messages") == [(b"\xff\xfe not json",)]
    client.subscribe_replies("app")
    temp = client.request("temp", "app", {"device_id": "t1", "date": "2026-01-22"})
    assert temp == {"device_id": "t1", "date": "2026-01-22", "count": 2, "records": [
        {"temperature": 22.5, "humidity": 45.3, "status": "HIGH", "timestamp": "2026-01-22T09:00:00.250000+05:30"},
        {"temperature": 22.5, "humidity": 45.3, "status": "HIGH", "timestamp": "2026-01-22T14:30:00"}]}
    day = client.request("power", "app", {"device_id": "p1", "date": "2026-01-22"})
    assert day["records"] == [{"ebstatus": "OFF", "dgstatus": "ON", "timestamp": "2026-01-22T08:00:00"}]
    pages = [client.request("temp", "app", {"device_id": "t1", "date": "2026-01-22", "limit": 1})]
    pages.append(client.request("temp", "app", {"device_id": "t1", "date": "2026-01-22", "limit": 1,
                                                "cursor": pages[0]["next"]}))
    assert [p["records"][0]["timestamp"][11:19] for p in pages] == ["09:00:00", "14:30:00"]
    assert "next" not in pages[1]
    latest = client.request("fingerprint", "app", {"device_id": "f1", "latest": True})
    assert latest["records"] == [{"user_id": "u1", "authStatus": "PASS", "timestamp": "2026-01-22T07:00:00"}]
    assert service.query("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert service.terminate() == 0
    assert "PostgreSQL" in service.log() and SENTINEL not in service.log()
    assert SENTINEL not in service.log_path.read_text()


def test_nothing_is_lost_when_the_service_is_killed_mid_stream(pg_service, client):
    service = pg_service
    service.start().wait_ready()
    for i in range(600):
        client.publish("home/fingerprint", fingerprint("f9", f"u{i}", "PASS", f"2026-02-01T10:{i // 60:02d}:{i % 60:02d}"), wait=False)
        if i == 300:
            service.kill()
            service.start()
    service.wait_ready()
    wait_until(lambda: count(service, "fingerprint_logs") == 600, timeout=60, what="600 readings")
    assert service.query("SELECT COUNT(DISTINCT user_id) FROM fingerprint_logs") == [(600,)]


def test_check_config_on_postgresql(broker, pg_url):
    def check(url):
        env = {**os.environ, "MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
               "LOG_FILE": "", "DATABASE_URL": url}
        result = subprocess.run([sys.executable, "system.py", "--check-config"], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, env=env)
        return result.returncode, result.stdout + result.stderr
    rc, out = check(pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{SENTINEL}@"))
    assert rc == 0 and "ok      database: postgresql://postgres:***@" in out and "PostgreSQL" in out, out
    rc, out = check(pg_url + "_missing")
    assert rc == 1 and "FAILED  database: cannot use" in out and "does not exist" in out, out
    assert SENTINEL not in out


def test_retention_on_postgresql(broker, tmp_path, pg_url, client):
    old = (datetime.now(timezone.utc).date() - timedelta(days=10)).isoformat()
    today = datetime.now(timezone.utc).date().isoformat()
    config = tmp_path / "keep.toml"
    config.write_text(f'[retention]\ntemperature_days = 5\narchive_dir = "{tmp_path}/archive"\n')
    service = Service(broker, tmp_path, DATABASE_URL=pg_url)
    try:
        service.start().wait_ready()
        for stamp in (f"{old}T01:00:00", f"{old}T02:00:00", f"{today}T01:00:00"):
            client.publish("home/temperature", {"device_id": "t1", "temperature": 1.0, "humidity": 2.0,
                                                "status": "LOW", "timestamp": stamp})
        wait_until(lambda: count(service, "temperature_logs") == 3)
        service.terminate()
        service.start("--config", str(config)).wait_ready()  # a pass at start-up
        wait_until(lambda: count(service, "temperature_logs") == 1, what="the old day deleted")
        archive = tmp_path / "archive" / "temperature_logs" / old[:4] / f"temperature_logs-{old}.csv.gz"
        with gzip.open(archive, "rt") as f:
            assert len(f.read().splitlines()) == 1 + 2
    finally:
        service.stop_quietly()


def test_a_batch_of_rejections_alone_is_stored_and_the_writer_goes_on(pg_service, client):
    """Found by the conformance suite on PostgreSQL: a batch with no rows for its table crashed the writer."""
    service = pg_service
    service.start().wait_ready()
    client.publish("home/power", b"{not json")
    wait_until(lambda: count(service, "rejected_messages") == 1)
    client.publish("home/power", power("p1", "EB_ON", "2026-01-22T08:00:00"))
    wait_until(lambda: count(service, "power_status_logs") == 1)
    assert "crashed" not in service.log()
