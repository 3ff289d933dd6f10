"""The whole service (`python system.py`) against a real Mosquitto and a real SQLite file (and,
where marked, a real PostgreSQL database too)."""

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from builders import fingerprint, power, temperature
from conftest import ROOT, Service, wait_until


@pytest.fixture
def either(broker, tmp_path, database_env):
    """The service on SQLite, then on PostgreSQL."""
    s = Service(broker, tmp_path, **database_env)
    yield s
    s.stop_quietly()


def reading(dev, i, day="2026-04-01"):
    return temperature(dev, i, day, humidity=40.0)


def count(service, table="temperature_logs", dev=None):
    sql = f"SELECT COUNT(*) FROM {table}" + (" WHERE device_id = ?" if dev else "")
    return service.query(sql, (dev,) if dev else ())[0][0]


def test_readings_of_every_type_are_stored_and_served_and_garbage_is_kept_aside(either, client):
    service = either
    service.start().wait_ready()
    client.publish("home/temperature", reading("t1", 5))
    client.publish("home/power", power("p1", "DG_ON", "2026-04-01T06:00:00"))
    client.publish("home/fingerprint", fingerprint("f1", "u7", "FAIL", "2026-04-01T06:00:00"))
    client.publish("home/power", b'{"device_id": "p1", "status": "EB_ON"}')
    wait_until(lambda: count(service, "rejected_messages") == 1 and count(service, "fingerprint_logs") == 1,
               what="all four messages stored")
    client.subscribe_replies("app1")
    assert client.request("temp", "app1", {"device_id": "t1", "date": "2026-04-01"})["records"] == [
        {"temperature": 25.0, "humidity": 40.0, "status": "LOW", "timestamp": "2026-04-01T00:00:05"}]
    assert client.request("power", "app1", {"device_id": "p1", "date": "2026-04-01"})["records"] == [
        {"ebstatus": "", "dgstatus": "ON", "timestamp": "2026-04-01T06:00:00"}]
    assert client.request("fingerprint", "app1", {"device_id": "f1", "date": "2026-04-01"})["records"] == [
        {"user_id": "u7", "authStatus": "FAIL", "timestamp": "2026-04-01T06:00:00"}]
    [(payload, reason)] = service.query("SELECT payload, reason FROM rejected_messages")
    assert payload == b'{"device_id": "p1", "status": "EB_ON"}' and reason == "missing field 'timestamp'"
    assert "rejected a reading on home/power: missing field 'timestamp'" in service.log()


def test_a_reading_is_acknowledged_only_once_it_is_committed(service, client):
    """With the write lock held by an operator's sqlite3 session the reading cannot be committed;
    kill -9 then: had it been acknowledged, the broker would not deliver it again and it would be lost."""
    service.serve_metrics().start().wait_ready()
    client.publish("home/temperature", reading("warmup", 0))
    wait_until(lambda: count(service) == 1, what="the first reading")
    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    try:
        client.publish("home/temperature", reading("locked", 1))
        wait_until(lambda: (service.metric("mqtt_client_commit_failures_total") or 0) >= 1, 30, what="a failed commit")
        service.kill()
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    service.start().wait_ready()
    wait_until(lambda: count(service, dev="locked") == 1, what="the redelivered reading")


def test_sigterm_mid_stream_exits_0_and_loses_nothing(either, client):
    service = either
    service.start().wait_ready()
    total = 3000
    done = threading.Event()

    def publish_all():
        for i in range(total):
            client.publish("home/temperature", reading("stream", i), wait=(i % 200 == 199))
        done.set()

    threading.Thread(target=publish_all, daemon=True).start()
    wait_until(lambda: count(service) > 100, what="the stream to be flowing")
    assert service.terminate() == 0
    assert "disconnected from the MQTT broker" in service.log()
    assert done.wait(60)
    service.start().wait_ready()
    wait_until(lambda: count(service) == total, 30, what=f"all {total} readings")


def blocked_signals(pid: int, tid: int) -> int:
    """The mask of signals thread `tid` of process `pid` blocks (bit n-1: signal n)."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)[1], 16)


def test_sigterm_and_sigint_reach_the_main_thread_alone(service):
    """Every thread but the main one blocks the stop signals, so the kernel hands them to the main
    thread, which waits for them: never to another thread, where Python would only set a flag."""
    service.serve_metrics().start().wait_ready()
    pid = service.proc.pid
    threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) > 10  # the actors' threads, the link's loop, the metrics server
    stop = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
    assert blocked_signals(pid, pid) & stop == 0
    assert [t for t in threads if t != pid and blocked_signals(pid, t) & stop != stop] == []
    assert service.terminate() == 0


def test_a_bad_setting_stops_start_up_with_exit_code_2_naming_it(tmp_path):
    result = subprocess.run([sys.executable, "system.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30, env={"PATH": "/usr/bin:/bin", "MQTT_BROKER_PORT": "eighty",
                                             "DATABASE_PATH": str(tmp_path / "x.db")})
    assert result.returncode == 2
    assert "MQTT_BROKER_PORT='eighty'" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[queries]\npool = 3\n")
    result = subprocess.run([sys.executable, "system.py", "--config", str(bad)], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "queries.pool" in result.stderr and "pool_size" in result.stderr


def test_a_database_that_cannot_be_opened_ends_start_up_with_exit_code_1(tmp_path, broker):
    env = {"PATH": "/usr/bin:/bin", "MQTT_BROKER_PORT": str(broker.port), "LOG_FILE": "",
           "DATABASE_PATH": str(tmp_path / "no-such-dir" / "x.db")}
    result = subprocess.run([sys.executable, "system.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 1
    assert f"cannot open the database {tmp_path}/no-such-dir/x.db: unable to open database file" in result.stderr
    assert "start-up failed" in result.stderr
