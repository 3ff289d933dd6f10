"""A crashed actor loses nothing: the supervisor restarts it and the broker redelivers what it
held. In-process, with the real supervisor, a real Mosquitto and a real SQLite file."""

import dataclasses
import logging
import queue
import sqlite3

import pytest

from actors.messages import WriteBatch
from actors.settings import load_settings
from actors.supervisor import Supervisor
from conftest import MqttClient, wait_until


@pytest.fixture
def settings(broker, tmp_path):
    s = load_settings(environ={"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
                               "MQTT_CLIENT_ID": "supervised", "DATABASE_PATH": str(tmp_path / "d.db"),
                               "LOG_FILE": ""})
    return dataclasses.replace(
        s, mqtt=dataclasses.replace(s.mqtt, reconnect_min_delay=0.1, reconnect_max_delay=0.5),
        database=dataclasses.replace(s.database, busy_timeout=0.05, retry_delay=0.05))


def stored(path, device):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM temperature_logs WHERE device_id = ?", (device,)).fetchone()[0]
    finally:
        con.close()


def reading(device, i):
    return {"device_id": device, "temperature": 20.0, "humidity": 40.0, "status": "LOW",
            "timestamp": f"2026-06-01T00:00:{i:02d}"}


def test_readings_held_by_a_crashed_writer_are_delivered_again_and_stored(settings, broker, caplog):
    caplog.set_level(logging.INFO)
    exits = queue.Queue()
    supervisor = Supervisor.start(settings, exits.put)
    peers = supervisor.proxy().peers.get()
    wait_until(lambda: "taking readings and requests" in caplog.text, what="the service to subscribe")
    client = MqttClient(broker.port)
    db = settings.database.path
    client.publish("home/temperature", reading("warmup", 0))
    wait_until(lambda: stored(db, "warmup") == 1)

    operator = sqlite3.connect(db, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")  # the writer now holds readings it cannot commit
    for i in range(50):
        client.publish("home/temperature", reading("held", i))
    wait_until(lambda: "cannot commit to the database" in caplog.text, what="a failed commit")
    # A batch the writer cannot handle (a bug): it crashes with the 50 readings in hand.
    peers.tell("writer", WriteBatch("no-such-device", (("x",),), (), ()))
    operator.execute("ROLLBACK")
    operator.close()

    wait_until(lambda: "writer crashed" in caplog.text, what="the crash")
    wait_until(lambda: stored(db, "held") == 50, 30, what="the 50 readings, delivered again")
    assert "reconnecting so that the broker redelivers" in caplog.text
    assert exits.empty(), "one crash must not end the process"
    client.close()
    supervisor.stop()
