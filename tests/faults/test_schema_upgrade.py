"""A database of the first released schema (the original program's, as its README describes it)
is upgraded in place at start-up: every row kept (exact repeats once), timestamps made canonical,
the identity indexes and rejected_messages added; a newer schema stops start-up and is left as
it was."""

import hashlib
import sqlite3

from conftest import MqttClient, Service, wait_until

SEED_SCHEMA = """
CREATE TABLE temperature_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
    temperature REAL, humidity REAL, status TEXT, timestamp TEXT, date TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE power_status_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
    ebstatus TEXT, dgstatus TEXT, timestamp TEXT, date TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE fingerprint_logs (id INTEGER PRIMARY KEY AUTOINCREMENT, device_id TEXT NOT NULL,
    user_id TEXT, auth_status TEXT, timestamp TEXT, date TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE INDEX idx_temperature_device_date ON temperature_logs (device_id, date);
"""

TEMPERATURE = [  # (device, temperature, humidity, status, timestamp, date) as the old program stored them
    ("t1", 22.5, 45.3, "HIGH", "2026-01-22T14:30:00", "2026-01-22"),
    ("t1", 22.5, 45.3, "HIGH", "2026-01-22T14:30:00", "2026-01-22"),  # a redelivery, stored twice then
    ("t1", 21.0, 44.0, "LOW", "2026-01-22 09:15:00", "2026-01-22"),  # a space, not a T
    ("t1", 23.0, 46.0, "HIGH", "2026-01-22T18:00:00", "2026-01-22"),
    ("t2", 19.0, 50.0, "LOW", "2026-01-21T23:59:59", "2026-01-21"),
]
POWER = [("p1", "ON", "", "2026-01-22T08:00:00", "2026-01-22"), ("p1", "", "ON", "2026-01-22T09:00:00", "2026-01-22")]
FINGER = [("f1", "u1", "PASS", "2026-01-22T07:00:00", "2026-01-22")]


def seed_database(path):
    con = sqlite3.connect(path)
    con.executescript(SEED_SCHEMA)
    con.executemany("INSERT INTO temperature_logs (device_id, temperature, humidity, status, timestamp, date) "
                    "VALUES (?,?,?,?,?,?)", TEMPERATURE)
    con.executemany("INSERT INTO power_status_logs (device_id, ebstatus, dgstatus, timestamp, date) "
                    "VALUES (?,?,?,?,?)", POWER)
    con.executemany("INSERT INTO fingerprint_logs (device_id, user_id, auth_status, timestamp, date) "
                    "VALUES (?,?,?,?,?)", FINGER)
    con.commit()
    con.close()


def test_the_first_released_schema_is_upgraded_in_place(broker, tmp_path):
    service = Service(broker, tmp_path)
    seed_database(service.db_path)
    client = MqttClient(broker.port)
    try:
        service.start().wait_ready()
        assert "upgrading the database schema from version 1 to 2" in service.log()
        assert "upgrading the database schema from version 2 to 3" in service.log()
        assert "upgrading the database schema from version 3 to 4" in service.log()
        assert "upgrading the database schema from version 4 to 5" in service.log()
        assert "upgrading the database schema from version 5 to 6" in service.log()
        assert service.query("SELECT version FROM schema_version") == [(6,)]
        assert service.query("SELECT COUNT(*) FROM delivery_failures") == [(0,)]
        assert service.query("SELECT id, device_id, timestamp FROM temperature_logs ORDER BY id") == [
            (1, "t1", "2026-01-22T14:30:00"), (3, "t1", "2026-01-22T09:15:00"), (4, "t1", "2026-01-22T18:00:00"),
            (5, "t2", "2026-01-21T23:59:59")]
        assert len(service.query("SELECT * FROM power_status_logs")) == 2
        assert service.query("SELECT user_id, auth_status FROM fingerprint_logs") == [("u1", "PASS")]
        for table in ("temperature_logs", "power_status_logs", "fingerprint_logs"):
            unique = [row[1] for row in service.query(f"PRAGMA index_list({table})") if row[2]]
            assert f"{table}_identity" in unique, table
        assert ("idx_temperature_device_date",) in service.query(
            "SELECT name FROM sqlite_master WHERE type = 'index'")  # the operator's own index is kept
        assert service.query("SELECT COUNT(*) FROM rejected_messages") == [(0,)]
        # the catalogue and the rollups, built from the rows already there
        assert service.query("SELECT type, device_id, readings, first_seen, last_seen FROM devices ORDER BY 1, 2") == [
            ("fingerprint", "f1", 1, "2026-01-22T07:00:00", "2026-01-22T07:00:00"),
            ("power", "p1", 2, "2026-01-22T08:00:00", "2026-01-22T09:00:00"),
            ("temperature", "t1", 3, "2026-01-22T09:15:00", "2026-01-22T18:00:00"),
            ("temperature", "t2", 1, "2026-01-21T23:59:59", "2026-01-21T23:59:59")]
        assert service.query("SELECT SUM(readings) FROM temperature_hourly") == [(4,)]
        assert service.query("SELECT SUM(readings), SUM(passes) FROM fingerprint_hourly") == [(1, 1)]
        # Old rows answer in time order, and a redelivered old reading is recognised.
        client.publish("home/temperature", {"device_id": "t1", "temperature": 21.0, "humidity": 44.0,
                                            "status": "LOW", "timestamp": "2026-01-22T09:15:00"})
        client.publish("home/temperature", {"device_id": "t1", "temperature": 20.0, "humidity": 40.0,
                                            "status": "LOW", "timestamp": "2026-01-22T10:00:00"})
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 5)
        client.subscribe_replies("app")
        reply = client.request("temp", "app", {"device_id": "t1", "date": "2026-01-22"})
        assert [r["timestamp"][11:] for r in reply["records"]] == ["09:15:00", "10:00:00", "14:30:00", "18:00:00"]
        power = client.request("power", "app", {"device_id": "p1", "date": "2026-01-22"})
        assert power["records"][-1] == {"ebstatus": "ON", "dgstatus": "ON", "timestamp": "2026-01-22T09:00:00"}
        assert service.terminate() == 0
        # Started again: nothing more to do.
        service.start().wait_ready()
        assert service.log().count("upgrading the database schema") == 0
    finally:
        client.close()
        service.stop_quietly()


def test_a_newer_schema_stops_start_up_and_is_left_as_it_was(broker, tmp_path):
    service = Service(broker, tmp_path)
    service.start().wait_ready()
    assert service.terminate() == 0
    con = sqlite3.connect(service.db_path)
    con.execute("UPDATE schema_version SET version = 7")
    con.commit()
    con.close()
    before = hashlib.sha256(service.db_path.read_bytes()).hexdigest()
    service.start()
    assert service.proc.wait(30) == 1
    assert "schema version 7, newer than this service's (6)" in service.log()
    assert hashlib.sha256(service.db_path.read_bytes()).hexdigest() == before
