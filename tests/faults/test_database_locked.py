"""Fault 4: an operator's sqlite3 session holds the write lock for a minute."""

import os
import sqlite3
import threading
import time

import pytest
from builders import temperature
from conftest import wait_until

LOCK_SECONDS = float(os.environ.get("FAULT_LOCK_SECONDS", "60"))


def reading(i):
    return temperature("locked", i, "2026-08-01", value=20.0)


@pytest.mark.slow
def failing(service) -> bool:
    """Whether the service has failed a commit (counted in its metrics)."""
    return (service.metric("mqtt_client_commit_failures_total") or 0) >= 1


def test_a_minute_long_write_lock_delays_ingestion_but_loses_nothing_and_requests_are_answered(service, client):
    service.serve_metrics().start().wait_ready()
    pid = service.proc.pid
    client.publish("home/temperature", reading(0))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
    client.subscribe_replies("ops")

    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    locked_at = time.monotonic()
    sent = threading.Event()

    def publish_during_the_lock():
        for i in range(1, 301):
            client.publish("home/temperature", reading(i), wait=(i % 50 == 0))
        sent.set()

    threading.Thread(target=publish_during_the_lock, daemon=True).start()
    wait_until(lambda: failing(service), 30, what="a failed commit")
    answered = 0
    while time.monotonic() - locked_at < LOCK_SECONDS:  # requests keep being answered meanwhile
        reply = client.request("temp", "ops", {"device_id": "locked", "date": "2026-08-01"})
        assert reply["count"] == 1, reply  # what was committed before the lock
        answered += 1
        time.sleep(1)
    assert sent.wait(30)
    assert service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1  # nothing slipped in
    operator.execute("ROLLBACK")
    operator.close()

    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 301, 60,
               what="everything published during the lock")
    assert client.request("temp", "ops", {"device_id": "locked", "date": "2026-08-01"})["count"] == 301
    log = service.log()
    assert service.proc.poll() is None and service.proc.pid == pid  # no crash, no restart
    assert "crashed" not in log and log.count("cannot commit to the database") == 1
    assert "database writes resumed" in log
    print(f"lock held {LOCK_SECONDS:.0f} s: {answered} requests answered during it; 301 of 301 stored")


def test_a_start_while_an_operator_holds_the_write_lock_waits_for_it_and_answers_meanwhile(service, client):
    service.serve_metrics().start().wait_ready()
    client.publish("home/temperature", reading(0))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
    assert service.terminate() == 0

    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    try:
        service.start().wait_ready()  # does not exit: the schema is current, so start-up only reads
        client.subscribe_replies("ops")
        for i in range(1, 11):
            client.publish("home/temperature", reading(i))
        wait_until(lambda: failing(service), 30, what="a failed commit")
        reply = client.request("temp", "ops", {"device_id": "locked", "date": "2026-08-01"})
        assert reply["count"] == 1  # what is stored, meanwhile
        assert service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 11, 30)
    wait_until(lambda: "database writes resumed" in service.log())  # logged just after the commit
    assert service.log().count("cannot commit to the database") == 1
    assert service.proc.poll() is None


def test_sigterm_ends_the_process_within_10_s_while_a_commit_waits_for_a_lock(service, client):
    service.serve_metrics().start().wait_ready()
    client.publish("home/temperature", reading(0))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    try:
        for i in range(1, 51):
            client.publish("home/temperature", reading(i))  # in hand, waiting for the lock
        wait_until(lambda: failing(service), 30, what="a failed commit")
        stopping = time.monotonic()
        assert service.terminate(timeout=15) == 0
        took = time.monotonic() - stopping
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    print(f"SIGTERM with a commit waiting for a lock: exit 0 after {took:.1f} s")
    assert took < 10
    # What was not committed is delivered again by the broker.
    service.start().wait_ready()
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 51, 30)


def archived(tmp_path):
    """Where the pass archives the expired day."""
    return tmp_path / "archive" / "temperature_logs" / "2025" / "temperature_logs-2025-01-01.csv.gz"


def expired_rows(service, client, tmp_path):
    """20 readings a year old stored (and one recent); the settings that expire them: a config file."""
    config = tmp_path / "site.toml"
    config.write_text(f'[retention]\ntemperature_days = 365\narchive_dir = "{tmp_path / "archive"}"\n')
    service.start().wait_ready()  # no retention yet: the rows to expire are stored first
    for i in range(20):
        client.publish("home/temperature", temperature("old", i, "2025-01-01"))
    client.publish("home/temperature", reading(0))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 21)
    assert service.terminate() == 0
    return config


def test_a_start_under_an_operators_lock_with_retention_due_stays_up_and_the_pass_completes_after(service, client,
                                                                                                 tmp_path):
    """The retention pass meets the lock at start-up: it waits and tries again (logged once), never
    crashes, and completes once the lock is gone; requests are answered meanwhile."""
    config = expired_rows(service, client, tmp_path)
    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    try:
        service.start("--config", str(config)).wait_ready()
        pid = service.proc.pid
        client.subscribe_replies("ops")
        for _ in range(6):  # answered while the pass waits (a try takes the busy timeout, 5 s), past the retries
            assert client.request("temp", "ops", {"device_id": "locked", "date": "2026-08-01"})["count"] == 1
            time.sleep(2)
        assert service.proc.poll() is None
        assert service.query("SELECT COUNT(*) FROM temperature_logs WHERE date = '2025-01-01'")[0][0] == 20
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs WHERE date = '2025-01-01'")[0][0] == 0,
               60, what="the pass to complete after the lock")
    assert archived(tmp_path).exists()
    log = service.log()
    assert service.proc.pid == pid and service.proc.poll() is None
    assert log.count("retention pass stopped") == 1 and "crashed" not in log
    assert "retention: a pass completed after" in log


def test_sigterm_ends_the_process_in_time_while_retention_and_ingestion_wait_for_an_operators_lock(service, client,
                                                                                                  tmp_path):
    config = expired_rows(service, client, tmp_path)
    operator = sqlite3.connect(service.db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    try:
        service.start("--config", str(config)).wait_ready()
        for i in range(1, 51):
            client.publish("home/temperature", reading(i))  # in hand, waiting for the lock
        # the pass has archived the old day (before it asks the writer to delete it, which waits for the lock)
        wait_until(lambda: archived(tmp_path).exists(), 30, what="the pass to reach its deletes")
        stopping = time.monotonic()
        assert service.terminate(timeout=20) == 0
        took = time.monotonic() - stopping
    finally:
        operator.execute("ROLLBACK")
        operator.close()
    print(f"SIGTERM with retention and commits waiting for a lock: exit 0 after {took:.1f} s")
    assert took < 15
    service.start().wait_ready()  # what was not committed is delivered again
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs WHERE device_id = 'locked'")[0][0] == 51,
               30)
