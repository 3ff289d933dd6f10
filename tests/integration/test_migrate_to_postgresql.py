"""scripts/migrate_to_postgresql.py: a SQLite database the service wrote, copied into PostgreSQL,
serves the same replies there, and new rows continue after the copied ids."""

import subprocess
import sys

from builders import fingerprint, power
from conftest import ROOT, MqttClient, Service, wait_until

READINGS = [
    ("home/temperature", {"device_id": "t1", "temperature": 21.5, "humidity": 40.0, "status": "LOW",
                          "timestamp": "2026-03-01T10:00:00"}),
    ("home/temperature", {"device_id": "t1", "temperature": 22.5, "humidity": 41.0, "status": "HIGH",
                          "timestamp": "2026-03-01T11:00:00"}),
    ("home/power", power("p1", "DG_ON", "2026-02-28T23:00:00")),
    ("home/power", power("p1", "EB_OFF", "2026-03-01T08:00:00")),
    ("home/fingerprint", fingerprint("f1", "u1", "PASS", "2026-03-01T07:00:00")),
    ("home/fingerprint", b"\xffnot json"),
]
TABLES = ("temperature_logs", "power_status_logs", "fingerprint_logs", "rejected_messages")


def replies(client):
    return [client.request(stem, "mig", {"device_id": device, "date": "2026-03-01"})
            for stem, device in (("temp", "t1"), ("power", "p1"), ("fingerprint", "f1"))]


def migrate(*args):
    return subprocess.run([sys.executable, "scripts/migrate_to_postgresql.py", "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_sqlite_database_moves_to_postgresql_with_every_row(broker, tmp_path, pg_url):
    client = MqttClient(broker.port)
    client.subscribe_replies("mig")
    sqlite = Service(broker, tmp_path)
    postgres = Service(broker, tmp_path, DATABASE_URL=pg_url)
    try:
        sqlite.start().wait_ready()
        for topic, payload in READINGS:
            client.publish(topic, payload)
        wait_until(lambda: sum(sqlite.query(f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES) == len(READINGS))
        before = replies(client)
        rows = {t: sqlite.query(f"SELECT * FROM {t} ORDER BY id") for t in TABLES}
        assert sqlite.terminate() == 0

        result = migrate(str(sqlite.db_path), pg_url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "migrate: done" in result.stdout
        assert migrate(str(sqlite.db_path), pg_url).returncode == 1  # not into a database with rows

        postgres.start().wait_ready()
        copied = {t: postgres.query(f"SELECT * FROM {t} ORDER BY id") for t in TABLES}
        # In PostgreSQL a rejected message's topic is bytes (see TopicField in actors/storage/models.py).
        copied["rejected_messages"] = [(i, topic.decode(), *rest) for i, topic, *rest in copied["rejected_messages"]]
        assert copied == rows
        assert replies(client) == before
        client.publish("home/temperature", {"device_id": "t1", "temperature": 23.0, "humidity": 42.0,
                                            "status": "HIGH", "timestamp": "2026-03-01T12:00:00"})
        wait_until(lambda: postgres.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 3)
        assert postgres.query("SELECT MAX(id) FROM temperature_logs")[0][0] == rows["temperature_logs"][-1][0] + 1
    finally:
        client.close()
        sqlite.stop_quietly()
        postgres.stop_quietly()
